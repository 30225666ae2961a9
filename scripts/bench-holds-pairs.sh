#!/usr/bin/env bash
# Checks and holds of several builds side by side (issue 22's figures): for each ROUNDS, each
# build of BINS in turn runs scripts/bench-holds.sh (checks alone, holds alone, both at once;
# SECONDS_EACH seconds each at RATE checks and HOLD_RATE holds a second) on a database of its
# own, dropped after, once ClickHouse has had no merge or mutation for 3 s. Prints each run's
# figures and, per run, the ticks (10 ms) of CPU steal and of ClickHouse.
# usage: BINS="path/to/tally path/to/other-tally" [ROUNDS=3] bash scripts/bench-holds-pairs.sh
# BENCH_HOLDS_BIN: the client (default: built from examples/bench_holds).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ -n ${BINS:-} ]] || { echo "BINS: the tally builds to compare, separated by spaces" >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
bash scripts/stack-up.sh >/dev/null
if [[ -z ${BENCH_HOLDS_BIN:-} ]]; then
  cargo build --release --quiet --example bench_holds -p tally
  BENCH_HOLDS_BIN="$TARGET/release/examples/bench_holds"
fi
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }
# Quiet: no merge and no mutation for 3 s in a row (at most 2 minutes).
quiet() {
  local calm=0
  for _ in $(seq 1 240); do
    if [[ $(ch "SELECT (SELECT count() FROM system.merges) + (SELECT count() FROM system.mutations WHERE is_done = 0)") == 0 ]]; then
      calm=$((calm + 1))
    else
      calm=0
    fi
    ((calm >= 6)) && return 0
    sleep 0.5
  done
  echo "ClickHouse not quiet after 2 minutes; going on" >&2
}
steal() { awk '/^cpu /{print $9}' /proc/stat; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq 1 "$ROUNDS"); do
  for bin in $BINS; do
    quiet
    server=$(pgrep -f "clickhouse-server --config-file=$ROOT/.stack/clickhouse/config.xml" | head -1)
    s0=$(steal) c0=$(ticks "$server")
    db="tally_bench_pairs_$(date +%s)"
    echo "#### round $round: $bin $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    STACK_UP=0 BIN=$bin BENCH_HOLDS_BIN=$BENCH_HOLDS_BIN STATUS_PORT=18401 SERVE_PORT=18402 \
      DATABASE=$db SECONDS_EACH="${SECONDS_EACH:-15}" RATE="${RATE:-1000}" HOLD_RATE="${HOLD_RATE:-100}" \
      bash scripts/bench-holds.sh 2>&1
    echo "steal ticks during the run: $(($(steal) - s0)); ClickHouse CPU ticks: $(($(ticks "$server") - c0))"
    ch "DROP DATABASE IF EXISTS $db" >/dev/null
  done
done
