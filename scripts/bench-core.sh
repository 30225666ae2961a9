#!/usr/bin/env bash
# Instructions per event of the pure core (issue 23): callgrind counts the instructions of
# `bench_core`'s measured loop (`run_calls`, setup and payload building left out) with
# EVENTS calls and with none, and divides the difference by EVENTS. Instruction counts are
# the same on a busy machine as on an idle one, unlike events a second.
#   bash scripts/bench-core.sh [EVENTS]      (default 100000; installs valgrind if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-100000}"
# valgrind from Debian's packages, installed on first use (as stack-up.sh installs its own).
if ! command -v valgrind >/dev/null; then
    apt-get install -y -q valgrind >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q valgrind >/dev/null 2>&1; } ||
        { echo "could not install valgrind (apt-get install valgrind)" >&2; exit 1; }
fi
cargo build --release -q -p tally-core --example bench_core
target="${CARGO_TARGET_DIR:-target}"
bin="$target/release/examples/bench_core"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
count() {
    valgrind --tool=callgrind --toggle-collect='*run_calls*' \
        --callgrind-out-file="$out/callgrind.$1" "$bin" "$1" >/dev/null 2>"$out/log.$1"
    sed -n 's/^summary: //p;s/^totals: //p' "$out/callgrind.$1" | head -1
}
none="$(count 0)"
some="$(count "$events")"
echo "instructions in the loop: $some with $events events, $none with none"
echo "instructions per event: $(( (some - none) / events ))"
if [ -n "${KEEP:-}" ]; then
    cp "$out/callgrind.$events" "$KEEP"
    echo "profile kept in $KEEP (callgrind_annotate --inclusive=yes $KEEP)"
fi
