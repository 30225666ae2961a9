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
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ACCOUNTS="${ACCOUNTS:-10000}"
CALLS="${CALLS:-200000}"
ROUNDS="${ROUNDS:-5}"
bash scripts/stack-up.sh
cargo build --release --quiet --bin tally --example bare_consumer -p tally
cargo build --release --quiet -p tally-core --example bench_core

echo "== pure core (one thread)"
target/release/examples/bench_core 2000000

run="bench-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
export TALLY_CLICKHOUSE__DATABASE="tally_bench" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }
now() { date +%s.%N; }
ch "DROP DATABASE IF EXISTS tally_bench" >/dev/null
target/release/tally migrate >/dev/null
now="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
python3 scripts/bench-events.py --accounts "$ACCOUNTS" --grants --days "$ROUNDS" --now "$now" > .stack/bench-grants.jsonl
target/release/tally send --stamp-event-time .stack/bench-grants.jsonl
target/release/tally run --drain >/dev/null
offset=0
echo "== $ROUNDS rounds of $CALLS usage events over $ACCOUNTS accounts, 6 partitions"
printf '%-6s %-12s %-14s %-7s %-13s %-12s %-16s\n' round bare/s "tally run/s" ratio "idle restart" "ledger rows" "checkpoint rows"
for round in $(seq 1 "$ROUNDS"); do
  python3 scripts/bench-events.py --accounts "$ACCOUNTS" --calls "$CALLS" --round "$round" --days "$ROUNDS" --now "$now" > .stack/bench-round.jsonl
  target/release/tally send --stamp-event-time .stack/bench-round.jsonl
  offset=$((offset + CALLS))
  # The bare consumer reads the whole usage topic; its rate is taken over this round's share.
  bare=$(target/release/examples/bare_consumer 127.0.0.1:9092 "$TALLY_KAFKA__USAGE_TOPIC" "$offset" | grep -o '[0-9]* messages/s' | grep -o '^[0-9]*')
  t0=$(now); target/release/tally run --drain >/dev/null; t1=$(now)
  target/release/tally run --drain >/dev/null; t2=$(now)
  ledger=$(ch "SELECT count() FROM tally_bench.ledger")
  checkpoints=$(ch "SELECT count() FROM tally_bench.checkpoints")
  python3 -c "
r = $CALLS / ($t1 - $t0)
print(f'{$round:<6} {$bare:<12} {r:<14.0f} {r / $bare:<7.0%} {($t2 - $t1):<13.2f} {$ledger:<12} {$checkpoints:<16}')"
done
bash "$ROOT/scripts/bench-extra.sh"
