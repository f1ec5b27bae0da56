#!/usr/bin/env bash
# split-debuginfo.sh BINARY: moves the binary's debug info (the release
# profile's line tables) and symbol table into BINARY.debug beside it, and
# leaves BINARY stripped with a .gnu_debuglink to that file. Rust's panic
# backtraces, gdb and addr2line follow the link, so they keep function names
# and file:line while the binary itself stays small (`make build` runs this).
#
# The symbol table has to go too, not only the DWARF sections: drop glue for
# the server's nested filter types has mangled names of up to a megabyte.
#
# Running it again on a binary that is already split does nothing; cargo may
# put the unsplit binary back (it re-links target/release/sluice from deps/),
# and then it splits that one.
set -euo pipefail
bin="${1:?usage: split-debuginfo.sh BINARY}"
debug="$bin.debug"
sections=$(readelf -S -W "$bin")
if ! grep -q ' \.debug_line ' <<< "$sections"; then
  if grep -q ' \.gnu_debuglink ' <<< "$sections" && [ -f "$debug" ]; then
    exit 0
  fi
  echo "split-debuginfo.sh: $bin has no line tables (.debug_line) to split off" >&2
  exit 1
fi
objcopy --only-keep-debug "$bin" "$debug.tmp"
mv -f "$debug.tmp" "$debug"
# The link names the file beside the binary; write a copy, then replace, so the
# file cargo hard-linked from deps/ keeps its own contents.
( cd "$(dirname "$bin")" && objcopy --strip-all --add-gnu-debuglink="$(basename "$debug")" "$(basename "$bin")" "$(basename "$bin").split" )
mv -f "$bin.split" "$bin"
