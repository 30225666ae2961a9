#!/usr/bin/env bash
# Check and hold latency (issue 12; figures in docs/benchmarks.md, "Check and hold latency"):
# a `tally run` (status endpoint on 127.0.0.1:19464) and a `tally serve` (127.0.0.1:18080)
# on their own topics and database, ACCOUNTS accounts with plenty of credits, then
# examples/bench_holds at RATE requests a second for SECONDS seconds of `POST /v1/check`,
# then of `POST /v1/holds`, then both at once (checks at RATE, holds at HOLD_RATE). Prints
# p50, p99 and max of each. Release build unless PROFILE=debug.
# BIN (tally) and BENCH_HOLDS_BIN run given binaries instead of building (e.g. an older
# build, side by side); STATUS_PORT and SERVE_PORT move the two listeners; STACK_UP=0
# uses the stack as it runs; BACKLOG=N adds checks while N calls are applied; DATABASE
# names the ClickHouse database (dropped first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RATE="${RATE:-1000}"
SECONDS_EACH="${SECONDS_EACH:-20}"
ACCOUNTS="${ACCOUNTS:-100}"
HOLD_RATE="${HOLD_RATE:-$RATE}"
PROFILE="${PROFILE:-release}"
STATUS_PORT="${STATUS_PORT:-19464}"
SERVE_PORT="${SERVE_PORT:-18080}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[ "${STACK_UP:-1}" = 0 ] || bash scripts/stack-up.sh >/dev/null
if [ -z "${BIN:-}" ] || [ -z "${BENCH_HOLDS_BIN:-}" ]; then
  if [ "$PROFILE" = release ]; then
    cargo build --release --quiet --bin tally --example bench_holds -p tally
  else
    cargo build --quiet --bin tally --example bench_holds -p tally
  fi
fi
TALLY="${BIN:-$TARGET/$PROFILE/tally}"
BENCH="${BENCH_HOLDS_BIN:-$TARGET/$PROFILE/examples/bench_holds}"
run="benchholds-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
DATABASE="${DATABASE:-tally_bench_holds}"
export TALLY_CLICKHOUSE__DATABASE="$DATABASE" TALLY_STATUS__LISTEN="127.0.0.1:$STATUS_PORT"
export TALLY_SERVE__LISTEN="127.0.0.1:$SERVE_PORT" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025 TALLY_LOG=warn
KEY="bench-admin-key-0123456789abcdef"
export TALLY_SERVE__KEYS="admin=$KEY"
# One key sends every check and hold of the benchmark: its rate limit is not measured here.
export TALLY_SERVE__RATE_PER_SECOND=1000000 TALLY_SERVE__RATE_BURST=1000000
curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS $DATABASE" >/dev/null
"$TALLY" migrate >/dev/null
at="$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)"
for i in $(seq 0 $((ACCOUNTS - 1))); do
  a=$(printf 'bench-%04d' "$i")
  echo "{\"specversion\":\"1.0\",\"type\":\"credit.grant\",\"id\":\"g-$a\",\"source\":\"billing\",\"subject\":\"$a\",\"time\":\"$at\",\"data\":{\"kind\":\"promotional\",\"credits\":10000000}}"
done | "$TALLY" send - >/dev/null
"$TALLY" run >.stack/bench-holds-run.log 2>&1 &
run_pid=$!
"$TALLY" serve >.stack/bench-holds-serve.log 2>&1 &
serve_pid=$!
trap 'kill $run_pid $serve_pid 2>/dev/null || true' EXIT
# Ready once a check of the last account is answered by the owner.
last=$(printf 'bench-%04d' $((ACCOUNTS - 1)))
for _ in $(seq 1 600); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" \
    http://127.0.0.1:$SERVE_PORT/v1/check -d "{\"account\":\"$last\",\"feature\":\"erase\"}" || true)
  [ "$code" = 200 ] && break
  sleep 0.1
done
echo "== $TALLY: kafka.max_idle $(grep -E '^max_idle' config/tally.toml | head -1 || echo 200ms), $ACCOUNTS accounts"
bench() {
  "$BENCH" --base http://127.0.0.1:$SERVE_PORT --key "$KEY" --seconds "$SECONDS_EACH" \
    --accounts "$ACCOUNTS" "$@"
}
echo "== checks alone, $RATE/s for ${SECONDS_EACH}s"
bench --mode check --rate "$RATE"
# The delays below count from here: the grants applied at start-up waited for the start.
curl -s http://127.0.0.1:$STATUS_PORT/metrics >".stack/$run-metrics-before.txt"
echo "== holds alone, $HOLD_RATE/s for ${SECONDS_EACH}s"
bench --mode hold --rate "$HOLD_RATE" --prefix "$run-a"
echo "== checks at $RATE/s and holds at $HOLD_RATE/s at once, ${SECONDS_EACH}s"
bench --mode check --rate "$RATE" >".stack/$run-mixed-check.txt" &
checks=$!
bench --mode hold --rate "$HOLD_RATE" --prefix "$run-b"
wait $checks
cat ".stack/$run-mixed-check.txt"; rm -f ".stack/$run-mixed-check.txt"
if [ "${BACKLOG:-0}" -gt 0 ]; then
  # Checks while the owner applies a backlog of calls to 10,000 other accounts (grants
  # first): what a check waits for while the run loop applies and builds large flushes.
  now="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
  python3 scripts/bench-events.py --accounts 10000 --grants --days 1 --now "$now" >".stack/$run-grants.jsonl"
  python3 scripts/bench-events.py --accounts 10000 --calls "$BACKLOG" --round 1 --days 1 --now "$now" >".stack/$run-calls.jsonl"
  echo "== checks at $RATE/s while 10,000 accounts' grants and $BACKLOG calls are applied, ${SECONDS_EACH}s"
  bench --mode check --rate "$RATE" >".stack/$run-backlog-check.txt" &
  checks=$!
  "$TALLY" send --stamp-event-time ".stack/$run-grants.jsonl" >/dev/null 2>&1
  "$TALLY" send --stamp-event-time ".stack/$run-calls.jsonl" >/dev/null 2>&1
  wait $checks
  cat ".stack/$run-backlog-check.txt"
  rm -f ".stack/$run-backlog-check.txt" ".stack/$run-grants.jsonl" ".stack/$run-calls.jsonl"
fi
echo "== tally run's flushes during the run (mean seconds per phase, count)"
curl -s http://127.0.0.1:$STATUS_PORT/metrics | python3 -c '
import re, sys
sums, counts = {}, {}
for line in sys.stdin:
    m = re.match(r"tally_flush_duration_seconds_(sum|count)\{phase=\"(\w+)\"\} (\S+)", line)
    if m:
        (sums if m[1] == "sum" else counts)[m[2]] = float(m[3])
for phase in sums:
    if counts.get(phase):
        print(f"{phase:14} {1000 * sums[phase] / counts[phase]:8.1f} ms  {int(counts[phase])}")
'
echo "== the holds' records, from broker timestamp and from receipt to application (mean; the merge waits kafka.max_idle)"
curl -s http://127.0.0.1:$STATUS_PORT/metrics | python3 -c '
import sys
def read(lines):
    return {l.split()[0]: float(l.split()[1]) for l in lines if l.startswith(("tally_apply_delay_seconds_", "tally_command_wait_seconds_"))}
v, b = read(sys.stdin), read(open(sys.argv[1]))
for name, label in [("tally_apply_delay_seconds", "apply delay"), ("tally_command_wait_seconds", "command wait")]:
    s = v.get(name + "_sum", 0) - b.get(name + "_sum", 0)
    c = v.get(name + "_count", 0) - b.get(name + "_count", 0)
    print(f"{label:14} {1000 * s / c:8.1f} ms  {int(c)} records" if c else f"{label:14} (none)")
' ".stack/$run-metrics-before.txt"
rm -f ".stack/$run-metrics-before.txt"
echo "== CPU time of tally run (user+system): $(ps -o times= -p $run_pid | tr -d ' ') s, of tally serve: $(ps -o times= -p $serve_pid | tr -d ' ') s"
kill -TERM $run_pid; wait $run_pid || true
