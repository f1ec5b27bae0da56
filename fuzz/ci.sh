#!/usr/bin/env bash
# Builds every fuzz target and runs each briefly (FUZZ_SECONDS, default 5).
#
# Runs on the stable toolchain: `--sanitizer none` needs no nightly -Z flag,
# and libFuzzer's coverage guidance (sancov) works on stable. Builds are
# unoptimized (dev profile: quick to build; the runs are short) with debug
# assertions and overflow checks.
# A crash stops CI; the input is kept under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-5}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# Same dependency versions as the main build (the fuzz workspace adds
# libfuzzer-sys on top, resolved for the project's rust-version).
cp ../Cargo.lock Cargo.lock
targets=$(cargo fuzz list)
cargo fuzz build --dev --sanitizer none
mkdir -p artifacts
for t in $targets; do
  mkdir -p "corpus/$t"
  log="artifacts/$t.log"
  echo "fuzz: $t for ${seconds}s"
  if ! cargo fuzz run --dev --sanitizer none "$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $t failed (input saved under fuzz/artifacts/$t/)"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
done
echo "fuzz: every target ran clean"
