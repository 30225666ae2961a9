#!/usr/bin/env bash
# End-to-end throughput on the local ClickHouse cluster of one shard and two replicas
# (scripts/stack-cluster.sh) beside the single server (scripts/stack-up.sh), from one run
# over the same topics: ACCOUNTS accounts with three lots each and CALLS usage events are
# sent once; then, PASSES times in turn, `tally run --drain` applies them all into a fresh
# database on the single server, and into a fresh database on the cluster (each pass its own
# consumer group, so each reads the whole topics). A bare rdkafka consumer reads the usage
# topic in the same run, as the ceiling. Figures go in docs/benchmarks.md.
#   bash scripts/bench-cluster.sh    (ACCOUNTS, CALLS, PASSES, PARTITIONS to change the load)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ACCOUNTS="${ACCOUNTS:-10000}"
CALLS="${CALLS:-200000}"
PASSES="${PASSES:-2}"
PARTITIONS="${PARTITIONS:-6}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
bash scripts/stack-up.sh
bash scripts/stack-cluster.sh
cargo build --release --quiet --bin tally --example bare_consumer -p tally
TALLY="$TARGET/release/tally"
R1=$(sed -n 's/^CLUSTER_REPLICATED_R1=//p' .stack/cluster.env)
R2=$(sed -n 's/^CLUSTER_REPLICATED_R2=//p' .stack/cluster.env)

run="benchc-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__PARTITIONS="$PARTITIONS"
export TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
now() { date +%s.%N; }
single() { env TALLY_CLICKHOUSE__URL=http://127.0.0.1:8123 "$@"; }
cluster() {
  env TALLY_CLICKHOUSE__URL="$R1" TALLY_CLICKHOUSE__CLUSTER__NAME=tally_replicated \
    TALLY_CLICKHOUSE__CLUSTER__SHARDS="$R1,$R2" "$@"
}
drop() {   # drop URL DATABASE [ON CLUSTER ...]
  curl -sf "$1/" --data-binary "DROP DATABASE IF EXISTS $2 ${3:-}" >/dev/null
}

at="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
python3 scripts/bench-events.py --accounts "$ACCOUNTS" --grants --days 1 --now "$at" >.stack/benchc-grants.jsonl
python3 scripts/bench-events.py --accounts "$ACCOUNTS" --calls "$CALLS" --round 1 --days 1 --now "$at" >.stack/benchc-calls.jsonl
single env TALLY_CLICKHOUSE__DATABASE=benchc_topics "$TALLY" migrate >/dev/null 2>&1
drop http://127.0.0.1:8123 benchc_topics
"$TALLY" send --stamp-event-time .stack/benchc-grants.jsonl >/dev/null
"$TALLY" send --stamp-event-time .stack/benchc-calls.jsonl >/dev/null
records=$((ACCOUNTS * 3 + CALLS))
bare=$("$TARGET/release/examples/bare_consumer" 127.0.0.1:9092 "$TALLY_KAFKA__USAGE_TOPIC" "$CALLS" |
  grep -o '[0-9]* messages/s' | grep -o '^[0-9]*')
echo "== $records records ($ACCOUNTS accounts x 3 grants, $CALLS calls), $PARTITIONS partitions; bare consumer $bare/s"
printf '%-5s %-34s %-10s %-12s %-7s\n' pass target seconds "records/s" "of bare"
for pass in $(seq 1 "$PASSES"); do
  for where in single cluster; do
    db="benchc_${where}_$pass"
    if [[ $where == single ]]; then drop http://127.0.0.1:8123 "$db"; else
      drop "$R1" "$db" "ON CLUSTER tally_replicated"; drop "$R1" "${db}_local" "ON CLUSTER tally_replicated"
    fi
    "$where" env TALLY_CLICKHOUSE__DATABASE="$db" "$TALLY" migrate >/dev/null 2>&1
    t0=$(now)
    "$where" env TALLY_CLICKHOUSE__DATABASE="$db" TALLY_KAFKA__GROUP_ID="$run-$where-$pass" \
      "$TALLY" run --drain >/dev/null 2>>.stack/logs/bench-cluster.log
    t1=$(now)
    label=$([[ $where == single ]] && echo "single server (8123)" || echo "1 shard x 2 replicas (quorum 2)")
    python3 -c "
s = $t1 - $t0
print(f'{$pass:<5} {\"$label\":<34} {s:<10.2f} {$records / s:<12.0f} {$records / s / $bare:<7.0%}')"
    if [[ $where == single ]]; then drop http://127.0.0.1:8123 "$db"; else
      drop "$R1" "$db" "ON CLUSTER tally_replicated"; drop "$R1" "${db}_local" "ON CLUSTER tally_replicated"
    fi
  done
done
