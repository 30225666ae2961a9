#!/usr/bin/env bash
# Check and hold latency (issue 12; figures in docs/benchmarks.md, "Check and hold latency"):
# a `tally run` (status endpoint on 127.0.0.1:19464) and a `tally serve` (127.0.0.1:18080)
# on their own topics and database, ACCOUNTS accounts with plenty of credits, then
# examples/bench_holds at RATE requests a second for SECONDS seconds of `POST /v1/check`,
# then of `POST /v1/holds`. Prints p50, p99 and max of each. Release build unless
# PROFILE=debug.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RATE="${RATE:-1000}"
SECONDS_EACH="${SECONDS_EACH:-20}"
ACCOUNTS="${ACCOUNTS:-100}"
PROFILE="${PROFILE:-release}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
bash scripts/stack-up.sh >/dev/null
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet --bin tally --example bench_holds -p tally
else
  cargo build --quiet --bin tally --example bench_holds -p tally
fi
BIN="$TARGET/$PROFILE"
run="benchholds-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
export TALLY_CLICKHOUSE__DATABASE="tally_bench_holds" TALLY_STATUS__LISTEN="127.0.0.1:19464"
export TALLY_SERVE__LISTEN="127.0.0.1:18080" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025 TALLY_LOG=warn
KEY="bench-admin-key-0123456789abcdef"
export TALLY_SERVE__KEYS="admin=$KEY"
# One key sends every check and hold of the benchmark: its rate limit is not measured here.
export TALLY_SERVE__RATE_PER_SECOND=1000000 TALLY_SERVE__RATE_BURST=1000000
curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS tally_bench_holds" >/dev/null
"$BIN/tally" migrate >/dev/null
at="$(date -u -d '-1 hour' +%Y-%m-%dT%H:%M:%SZ)"
for i in $(seq 0 $((ACCOUNTS - 1))); do
  a=$(printf 'bench-%04d' "$i")
  echo "{\"specversion\":\"1.0\",\"type\":\"credit.grant\",\"id\":\"g-$a\",\"source\":\"billing\",\"subject\":\"$a\",\"time\":\"$at\",\"data\":{\"kind\":\"promotional\",\"credits\":10000000}}"
done | "$BIN/tally" send - >/dev/null
"$BIN/tally" run >.stack/bench-holds-run.log 2>&1 &
run_pid=$!
"$BIN/tally" serve >.stack/bench-holds-serve.log 2>&1 &
serve_pid=$!
trap 'kill $run_pid $serve_pid 2>/dev/null || true' EXIT
# Ready once a check of the last account is answered by the owner.
last=$(printf 'bench-%04d' $((ACCOUNTS - 1)))
for _ in $(seq 1 600); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" \
    http://127.0.0.1:18080/v1/check -d "{\"account\":\"$last\",\"feature\":\"erase\"}" || true)
  [ "$code" = 200 ] && break
  sleep 0.1
done
echo "== kafka.max_idle $(grep -E '^max_idle' config/tally.toml | head -1 || echo 200ms), $RATE requests/s for ${SECONDS_EACH}s each, $ACCOUNTS accounts, $PROFILE build"
"$BIN/examples/bench_holds" --base http://127.0.0.1:18080 --key "$KEY" --mode check \
  --rate "$RATE" --seconds "$SECONDS_EACH" --accounts "$ACCOUNTS"
"$BIN/examples/bench_holds" --base http://127.0.0.1:18080 --key "$KEY" --mode hold \
  --rate "$RATE" --seconds "$SECONDS_EACH" --accounts "$ACCOUNTS" --prefix "$run"
echo "== tally run's flushes during the run (mean seconds per phase, count)"
curl -s http://127.0.0.1:19464/metrics | python3 -c '
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
echo "== from a record's broker timestamp to its application (mean; the merge waits kafka.max_idle)"
curl -s http://127.0.0.1:19464/metrics | python3 -c '
import sys
v = {l.split()[0]: float(l.split()[1]) for l in sys.stdin if l.startswith("tally_apply_delay_seconds_")}
s, c = v.get("tally_apply_delay_seconds_sum", 0), v.get("tally_apply_delay_seconds_count", 0)
print(f"apply delay    {1000 * s / c:8.1f} ms  {int(c)} records" if c else "no records")
'
kill -TERM $run_pid; wait $run_pid || true
