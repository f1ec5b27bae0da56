#!/usr/bin/env bash
# Installs what sluice needs for the given roles (build, runtime, hardware,
# test, bench):
#
#  1. the Debian packages of those roles from packaging/debian-packages.txt
#     that are not installed yet. As root it runs apt-get; otherwise it prints
#     the exact commands to run (with sudo, or `su -c` where there is no sudo)
#     and fails.
#  2. with the build role: a Rust toolchain whose cargo is at least the
#     `rust-version` of Cargo.toml. When cargo is missing or older, it
#     installs the stable toolchain with rustup (minimal profile) into
#     ~/.cargo (CARGO_HOME), for whichever user runs it: rustup needs no root.
#  3. the rustup components named in SLUICE_RUST_COMPONENTS (.ci/run and
#     `make check` ask for "rustfmt clippy"), when cargo lacks them.
#  4. with the test role: kubernetes-validate (PyPI, the version pinned
#     below) in a venv of its own under ~/.cache/sluice (XDG_CACHE_HOME),
#     which validates deploy/kubernetes.yaml against the Kubernetes schemas
#     it bundles, offline. No root needed.
#
# Usage: install-deps.sh [--list | --dry-run] ROLE...
#   --list     only print the package names of the roles
#   --dry-run  print what it would install and run, change nothing
# It reads dpkg's database where dpkg does (DPKG_ADMINDIR moves it), checks
# the cargo named by $CARGO (default: cargo on PATH, after ~/.cargo/bin), and
# sets CI=true's components the same way as SLUICE_RUST_COMPONENTS.
set -euo pipefail
here="${BASH_SOURCE[0]%/*}"
[[ "$here" == "${BASH_SOURCE[0]}" ]] && here=.
cd "$here/.."

mode=install
case "${1:-}" in
  --list) mode=list; shift ;;
  --dry-run) mode=dry-run; shift ;;
esac
roles=("$@")
[ ${#roles[@]} -gt 0 ] || roles=(build runtime)

want=()
while read -r pkg pkg_roles _; do
  [[ -z "${pkg:-}" || "$pkg" == \#* ]] && continue
  IFS=, read -ra rs <<< "$pkg_roles"
  for r in "${rs[@]}"; do
    for wanted in "${roles[@]}"; do
      [[ "$r" == "$wanted" ]] && { want+=("$pkg"); break 2; }
    done
  done
done < packaging/debian-packages.txt
if [[ $mode == list ]]; then
  [ ${#want[@]} -eq 0 ] || printf '%s\n' "${want[@]}"
  exit 0
fi

say() { printf '%s\n' "$*" >&2; }
# Runs a command, or in a dry run prints it.
act() {
  if [[ $mode == dry-run ]]; then
    say "would run: $*"
  else
    "$@"
  fi
}

is_root=0
[ "$(id -u)" -eq 0 ] && is_root=1

# ---- Debian packages ---------------------------------------------------------
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# ---- Rust toolchain (build role) ---------------------------------------------
wants_build=0
for r in "${roles[@]}"; do [[ "$r" == build ]] && wants_build=1; done

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
# rustup's cargo comes first, as after `. ~/.cargo/env`; the Makefile does the same.
export PATH="$cargo_home/bin:$PATH"
cargo_cmd="${CARGO:-cargo}"

components=()
if [ -n "${SLUICE_RUST_COMPONENTS:-}" ]; then
  read -ra components <<< "$SLUICE_RUST_COMPONENTS"
elif [[ "${CI:-}" != "" && "${CI:-}" != false && "${CI:-}" != 0 ]]; then
  components=(rustfmt clippy)
fi

# "1.95.0" >= "1.92"? Missing parts count as 0.
version_at_least() {
  local IFS=.
  local -a have=($1) need=($2)
  local i
  for i in 0 1 2; do
    local h=${have[i]:-0} n=${need[i]:-0}
    h=${h%%[!0-9]*} n=${n%%[!0-9]*}
    ((10#${h:-0} > 10#${n:-0})) && return 0
    ((10#${h:-0} < 10#${n:-0})) && return 1
  done
  return 0
}

rust_problem=""
need_rust=""
if [ $wants_build -eq 1 ]; then
  need_rust=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml 2>/dev/null | head -n 1 || true)
  [ -n "$need_rust" ] || { say "install-deps.sh: no rust-version in $PWD/Cargo.toml"; exit 1; }
  cargo_version=$("$cargo_cmd" --version 2>/dev/null | sed -n 's/^cargo \([0-9][0-9.]*\).*/\1/p' || true)
  if [ -z "$cargo_version" ]; then
    rust_problem="cargo was not found"
  elif ! version_at_least "$cargo_version" "$need_rust"; then
    rust_problem="cargo $cargo_version ($(command -v "$cargo_cmd")) is older than that"
  fi
fi

comp_flags=()
for c in "${components[@]}"; do comp_flags+=(--component "$c"); done
rustup_init="curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable${comp_flags[*]:+ ${comp_flags[*]}}"
have_rustup=0
command -v rustup >/dev/null 2>&1 && have_rustup=1

# ---- A non-root user with packages missing: the exact commands, then stop ----
if [ ${#missing[@]} -gt 0 ] && [ $is_root -eq 0 ]; then
  apt_cmd="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
  say "sluice needs these Debian packages, which are not installed: ${missing[*]}"
  if ! command -v apt-get >/dev/null 2>&1; then
    say "(Debian/Ubuntu names; install their equivalents with your system's package manager.)"
  elif command -v sudo >/dev/null 2>&1; then
    say "Install them as root, then run make again:"
    say "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  else
    say "There is no sudo here; install them as root (su asks for root's password), then run make again:"
    say "  su -c '$apt_cmd'"
  fi
  if [ -n "$rust_problem" ]; then
    say "sluice also needs Rust >= $need_rust, and $rust_problem. Then, as yourself (rustup installs into $cargo_home, no root needed):"
    say "  $rustup_init"
    say "(make run and make test run this for you once the packages are there.)"
  fi
  exit 1
fi

# ---- Root: install the packages ----------------------------------------------
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "sluice needs these packages (Debian/Ubuntu names): ${missing[*]}"
    exit 1
  fi
  say "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the package lists once if they are missing or older than a day.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null | head -n 1)" ]; then
    act apt-get update -qq
  fi
  if [[ $mode == dry-run ]]; then
    act apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    apt-get install -y -qq --no-install-recommends "${missing[@]}" \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
  fi
fi

# ---- kubernetes-validate (test role) -------------------------------------------
KUBERNETES_VALIDATE_VERSION=1.37.0
wants_test=0
for r in "${roles[@]}"; do [[ "$r" == test ]] && wants_test=1; done
if [ $wants_test -eq 1 ]; then
  kv_dir="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
  if ! "$kv_dir/bin/kubernetes-validate" --version >/dev/null 2>&1; then
    say "Installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into $kv_dir:"
    act python3 -m venv "$kv_dir"
    act "$kv_dir/bin/pip" install -q --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
fi

# ---- Rust: install or update with rustup -------------------------------------
if [ -n "$rust_problem" ]; then
  say "sluice needs Rust >= $need_rust (rust-version in Cargo.toml) to build, and $rust_problem."
  if [ $have_rustup -eq 1 ]; then
    say "Installing the stable toolchain with rustup (minimal profile), as rustup default:"
    act rustup toolchain install stable --profile minimal "${comp_flags[@]}"
    act rustup default stable
  else
    say "Installing rustup and the stable toolchain (minimal profile) into $cargo_home:"
    if [[ $mode == dry-run ]]; then
      say "would run: $rustup_init"
    else
      say "+ $rustup_init"
      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
        | sh -s -- -y --profile minimal --default-toolchain stable "${comp_flags[@]}"
    fi
  fi
  if [[ $mode != dry-run ]]; then
    cargo_version=$("$cargo_home/bin/cargo" --version 2>/dev/null | sed -n 's/^cargo \([0-9][0-9.]*\).*/\1/p' || true)
    if [ -z "$cargo_version" ] || ! version_at_least "$cargo_version" "$need_rust"; then
      say "rustup did not leave a cargo >= $need_rust in $cargo_home/bin (found: ${cargo_version:-none})."
      exit 1
    fi
    say "Rust $cargo_version is in $cargo_home/bin; make finds it there. For your shell: . \"$cargo_home/env\""
  fi
  # A fresh toolchain already has the components asked for.
  exit 0
fi

# ---- Components (rustfmt, clippy) for a toolchain that is new enough ----------
for c in "${components[@]}"; do
  case "$c" in
    rustfmt) probe=fmt ;;
    *) probe="$c" ;;
  esac
  "$cargo_cmd" "$probe" --version >/dev/null 2>&1 && continue
  if [ $have_rustup -eq 0 ]; then
    say "cargo $probe is missing and there is no rustup to add $c: install $c for $("$cargo_cmd" --version 2>/dev/null)."
    exit 1
  fi
  say "Adding the rustup component $c (cargo $probe)."
  act rustup component add "$c"
done
exit 0
