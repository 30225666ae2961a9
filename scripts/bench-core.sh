#!/usr/bin/env bash
# Instructions per event of the pure core (issue 23): callgrind counts the instructions of
# `bench_core`'s measured loop (`run_calls`, setup and payload building left out) with
# EVENTS calls and with none, and divides the difference by EVENTS. Instruction counts are
# the same on a busy machine as on an idle one, unlike events a second.
#   bash scripts/bench-core.sh [EVENTS]      (default 100000; installs valgrind if missing)
# CACHE=1 simulates the caches too and prints first-level data misses (D1) and last-level
# misses (LL, data) per event beside the instructions: the time the loop waits on memory,
# which instruction counts miss and this VM's missing hardware counters cannot show.
# The caches simulated are a 32 KiB 8-way D1 and a 32 MiB 16-way LL (this machine's EPYC);
# LL=size,ways,line sets another last level (LL=1048576,8,64: a 1 MiB second level, the
# misses that go out to the shared L3).
# BIN=path counts that binary (e.g. a copy of another commit's build) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-100000}"
# valgrind from Debian's packages, installed on first use (as stack-up.sh installs its own).
if ! command -v valgrind >/dev/null; then
    apt-get install -y -q valgrind >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q valgrind >/dev/null 2>&1; } ||
        { echo "could not install valgrind (apt-get install valgrind)" >&2; exit 1; }
fi
# BIN=path counts a binary built before (another commit's), without building this one.
if [ -n "${BIN:-}" ]; then
    bin="$BIN"
else
    cargo build --release -q -p tally-core --example bench_core
    bin="${CARGO_TARGET_DIR:-target}/release/examples/bench_core"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
sim=()
if [ -n "${CACHE:-}" ]; then
    # Given, not read from the host: in this VM valgrind reads a direct-mapped 320 MiB LL.
    sim=(--cache-sim=yes --D1=32768,8,64 "--LL=${LL:-33554432,16,64}")
fi
# Addresses fixed (no ASLR) where setarch can: where the heap lies moved the count by about
# a dozen instructions an event from run to run (memcpy and memcmp take other paths).
norandom=()
if setarch "$(uname -m)" -R true 2>/dev/null; then norandom=(setarch "$(uname -m)" -R); fi
# Prints the loop's totals, one "event=count" a line (Ir, and with CACHE the misses too).
count() {
    "${norandom[@]}" valgrind --tool=callgrind --toggle-collect='*run_calls*' "${sim[@]}" \
        --callgrind-out-file="$out/callgrind.$1" "$bin" "$1" >/dev/null 2>"$out/log.$1"
    paste -d= \
        <(sed -n 's/^events: //p' "$out/callgrind.$1" | head -1 | tr ' ' '\n') \
        <(sed -n 's/^summary: //p;s/^totals: //p' "$out/callgrind.$1" | head -1 | tr ' ' '\n')
}
# The count of event $1 in the totals $2 (callgrind leaves out trailing zero counts).
pick() {
    local n
    n="$(sed -n "s/^$1=//p" <<<"$2")"
    echo "${n:-0}"
}
none="$(count 0)"
some="$(count "$events")"
per() { echo $(( ($(pick "$1" "$some") - $(pick "$1" "$none")) / events )); }
per100() {
    local d=$(( $(pick "$1" "$some") - $(pick "$1" "$none") ))
    printf '%d.%02d' $(( d / events )) $(( d * 100 / events % 100 ))
}
echo "instructions in the loop: $(pick Ir "$some") with $events events, $(pick Ir "$none") with none"
echo "instructions per event: $(per Ir)"
if [ -n "${CACHE:-}" ]; then
    echo "D1 misses per event: $(per100 D1mr) read, $(per100 D1mw) write"
    echo "LL misses per event: $(per100 DLmr) read, $(per100 DLmw) write"
fi
if [ -n "${KEEP:-}" ]; then
    cp "$out/callgrind.$events" "$KEEP"
    echo "profile kept in $KEEP (callgrind_annotate --inclusive=yes $KEEP)"
fi
