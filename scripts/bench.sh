#!/usr/bin/env bash
# Benchmarks (figures go in docs/benchmarks.md): the pure core alone, then end to end on
# the local stack: a bare rdkafka consumer reading the usage topic versus `tally run
# --drain` pricing, debiting and writing the same events to ClickHouse.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
EVENTS_PER_DAY="${EVENTS_PER_DAY:-100000}"
bash scripts/stack-up.sh
cargo build --release --quiet --bin tally --example bare_consumer -p tally
cargo build --release --quiet -p tally-core --example bench_core

echo "== pure core (one thread)"
target/release/examples/bench_core 2000000

run="bench-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
export TALLY_CLICKHOUSE__DATABASE="tally_bench" TALLY_STATUS__LISTEN=""
curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS tally_bench" >/dev/null
target/release/tally migrate >/dev/null
python3 scripts/sample-events.py --days 3 --calls-per-day "$EVENTS_PER_DAY" > .stack/bench-events.jsonl
usage=$(grep -c '"type": "ai.usage"' .stack/bench-events.jsonl)
target/release/tally send .stack/bench-events.jsonl

echo "== end to end: $usage usage events, 6 partitions"
target/release/examples/bare_consumer 127.0.0.1:9092 "$TALLY_KAFKA__USAGE_TOPIC" "$usage"
start=$(date +%s.%N)
target/release/tally run --drain
end=$(date +%s.%N)
python3 -c "print(f'tally run --drain: {$usage} usage events in {$end - $start:.2f} s: {$usage / ($end - $start):.0f} events/s (including start-up, assignment and the last flush)')"
