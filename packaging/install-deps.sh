#!/usr/bin/env bash
# Installs the Debian packages of the given roles from packaging/debian-packages.txt
# that are not installed yet. As root it runs apt-get; otherwise it prints the
# exact command to run and fails if something is missing.
# `install-deps.sh --list ROLE...` only prints the selected package names.
set -euo pipefail
cd "$(dirname "$0")/.."
list_only=0
if [[ "${1:-}" == "--list" ]]; then list_only=1; shift; fi
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
if [[ $list_only -eq 1 ]]; then
  [ ${#want[@]} -eq 0 ] || printf '%s\n' "${want[@]}"
  exit 0
fi
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "sluice needs these packages (Debian/Ubuntu names): ${missing[*]}" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "Missing packages: ${missing[*]}" >&2
  echo "Run: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "Installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists once if they are missing or older than a day.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -1)" ]; then
  apt-get update -qq
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
