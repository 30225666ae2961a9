#!/usr/bin/env bash
# Benchmarks (figures go in docs/benchmarks.md), each ratio from one run on the local stack:
# 1. the pure core alone (accounts with admins and alert thresholds);
# 2. rounds over a growing history: ACCOUNTS accounts with admins and three grants each, then
#    ROUNDS rounds of CALLS usage events into the same topics and database, one day apart
#    (grants ROUNDS days ago, round R on day R after them; broker timestamps are the event
#    times, so the partition clock, the dedup window and the open days move as in
#    production); per round a bare rdkafka consumer reads the round's events, `tally run
#    --drain` applies them, and an idle `tally run --drain` measures a restart; ledger and
#    checkpoint rows are counted;
# 3. scripts/bench-extra.sh: produce-to-visible latency, state bytes, recovery of 1M accounts.
# BASE_BIN: another `tally` (an older build) drains the same rounds into its own database
# and group, side by side. BIN (tally) and BARE_BIN run given binaries instead of building;
# STACK_UP=0 uses the stack as it runs; CORE=0 and EXTRA=0 skip parts 1 and 3.
# BENCH_DB names the databases (default tally_bench, and its _base): one per concurrent run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ACCOUNTS="${ACCOUNTS:-10000}"
CALLS="${CALLS:-200000}"
ROUNDS="${ROUNDS:-5}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[ "${STACK_UP:-1}" = 0 ] || bash scripts/stack-up.sh
if [ -z "${BIN:-}" ] || [ -z "${BARE_BIN:-}" ]; then
  cargo build --release --quiet --bin tally --example bare_consumer -p tally
fi
TALLY="${BIN:-$TARGET/release/tally}"
BARE="${BARE_BIN:-$TARGET/release/examples/bare_consumer}"
BASE="${BASE_BIN:-}"

if [ "${CORE:-1}" != 0 ]; then
  cargo build --release --quiet -p tally-core --example bench_core
  echo "== pure core (one thread)"
  "$TARGET/release/examples/bench_core" 2000000
fi

DB="${BENCH_DB:-tally_bench}"
run="bench-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
export TALLY_CLICKHOUSE__DATABASE="$DB" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }
now() { date +%s.%N; }
ch "DROP DATABASE IF EXISTS $DB" >/dev/null
"$TALLY" migrate >/dev/null
# The older build: its own database and consumer group on the same topics.
base() { TALLY_CLICKHOUSE__DATABASE="${DB}_base" TALLY_KAFKA__GROUP_ID="$run-base" "$BASE" "$@"; }
if [ -n "$BASE" ]; then
  ch "DROP DATABASE IF EXISTS ${DB}_base" >/dev/null
  base migrate >/dev/null
fi
now="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
python3 scripts/bench-events.py --accounts "$ACCOUNTS" --grants --days "$ROUNDS" --now "$now" > ".stack/$DB-grants.jsonl"
"$TALLY" send --stamp-event-time ".stack/$DB-grants.jsonl"
"$TALLY" run --drain >/dev/null
[ -z "$BASE" ] || base run --drain >/dev/null
offset=0
echo "== $ROUNDS rounds of $CALLS usage events over $ACCOUNTS accounts, 6 partitions"
printf '%-6s %-12s %-14s %-7s %-13s %-12s %-16s %s\n' round bare/s "tally run/s" ratio "idle restart" "ledger rows" "checkpoint rows" "${BASE:+base run/s, ratio, idle restart}"
for round in $(seq 1 "$ROUNDS"); do
  python3 scripts/bench-events.py --accounts "$ACCOUNTS" --calls "$CALLS" --round "$round" --days "$ROUNDS" --now "$now" > ".stack/$DB-round.jsonl"
  "$TALLY" send --stamp-event-time ".stack/$DB-round.jsonl"
  offset=$((offset + CALLS))
  # The bare consumer reads the whole usage topic; its rate is taken over this round's share.
  bare=$("$BARE" 127.0.0.1:9092 "$TALLY_KAFKA__USAGE_TOPIC" "$offset" | grep -o '[0-9]* messages/s' | grep -o '^[0-9]*')
  b0=$(now); b1=$b0; b2=$b0
  if [ -n "$BASE" ]; then
    base run --drain >/dev/null; b1=$(now)
    base run --drain >/dev/null; b2=$(now)
  fi
  t0=$(now); "$TALLY" run --drain >/dev/null; t1=$(now)
  "$TALLY" run --drain >/dev/null; t2=$(now)
  ledger=$(ch "SELECT count() FROM $DB.ledger")
  checkpoints=$(ch "SELECT count() FROM $DB.checkpoints")
  python3 -c "
r = $CALLS / ($t1 - $t0)
b = $CALLS / ($b1 - $b0) if $b1 > $b0 else 0
base = f'{b:.0f}, {b / $bare:.0%}, {($b2 - $b1):.2f} s' if b else ''
print(f'{$round:<6} {$bare:<12} {r:<14.0f} {r / $bare:<7.0%} {($t2 - $t1):<13.2f} {$ledger:<12} {$checkpoints:<16} {base}')"
done
[ "${EXTRA:-1}" = 0 ] || bash "$ROOT/scripts/bench-extra.sh"
