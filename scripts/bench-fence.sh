#!/usr/bin/env bash
# What fencing costs a restart (session 10, fence10): the idle restart over ACCOUNTS accounts
# (one grant each), by the binary before fencing (BASE) and after (NEW), side
# by side, each on a database of its own, in alternating order, ROUNDS times. Then the load's
# state query alone, without and with the lineage condition, on one partition of N_STATE
# accounts written under 4 claims (a lineage of 4), 5 times each, alternating.
#   BASE=/work/tgt-base10/release/tally NEW=target/release/tally scripts/bench-fence.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ACCOUNTS="${ACCOUNTS:-1000000}"
ROUNDS="${ROUNDS:-3}"
N_STATE="${N_STATE:-1000000}"
BASE="${BASE:?the binary before fencing}"
NEW="${NEW:-target/release/tally}"
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }
now() { date +%s.%N; }
setup() {   # setup NAME BINARY: topics, group and database of their own, drained once
  local run="$1-$(date +%s)"
  export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
  export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
  export TALLY_CLICKHOUSE__DATABASE="tally_$1" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
  export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
  ch "DROP DATABASE IF EXISTS tally_$1" >/dev/null
  "$2" migrate >/dev/null
  "$2" send --stamp-event-time .stack/bench-fence.jsonl >/dev/null
  "$2" run --drain >/dev/null 2>&1
  env | grep '^TALLY_' > ".stack/bench-fence-$1.env"
}
restart() {   # restart NAME BINARY: seconds of an idle `tally run --drain`
  local t0 t1
  set -a; source ".stack/bench-fence-$1.env"; set +a
  t0=$(now); "$2" run --drain >/dev/null 2>&1; t1=$(now)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}
python3 - "$ACCOUNTS" > .stack/bench-fence.jsonl <<'PY'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"specversion": "1.0", "type": "credit.grant", "id": f"g-{i}", "source": "billing",
                      "subject": f"acct-{i:07d}", "time": "2026-11-01T00:00:00Z",
                      "data": {"kind": "purchased", "credits": 100, "expires_at": None}}))
PY
setup fence_base "$BASE"
setup fence_new "$NEW"
for round in $(seq "$ROUNDS"); do
  if (( round % 2 )); then b=$(restart fence_base "$BASE"); n=$(restart fence_new "$NEW")
  else n=$(restart fence_new "$NEW"); b=$(restart fence_base "$BASE"); fi
  echo "round $round: idle restart over $ACCOUNTS accounts: before fencing ${b}s, fenced ${n}s"
done
echo "checkpoint rows: before $(ch "SELECT count() FROM tally_fence_base.checkpoints"), fenced $(ch "SELECT count() FROM tally_fence_new.checkpoints")"
ch "DROP DATABASE tally_fence_base"; ch "DROP DATABASE tally_fence_new"

# The load's state query, without and with the lineage condition.
DB=tally_fence10_bench
chq() { curl -sS --fail "http://127.0.0.1:8123/?database=${2:-$DB}" --data-binary "$1"; }
chq "DROP DATABASE IF EXISTS $DB" default; chq "CREATE DATABASE $DB" default
chq "CREATE TABLE checkpoints (stream String, partition UInt32, row_kind String, account String,
 key_hi UInt64, key_lo UInt64, version UInt64, usage_offset Int64, commands_offset Int64,
 arrival_high Int64, state String, seen_at Int64, written_at DateTime, claim UInt64)
 ENGINE = MergeTree ORDER BY (stream, partition, row_kind, version)"
# Four owners, each writing its accounts' states over 100 flushes (version = claim + 1..100).
chq "INSERT INTO checkpoints SELECT 's', 0, 'state', concat('acct-', toString(number)), 0, 0,
 claim + 1 + (number % 100), 0, 0, 0, concat(toString(rand64()), toString(rand64()), toString(rand64()), toString(rand64()), toString(rand64()), toString(rand64()), toString(rand64()), toString(rand64()), toString(rand64()), toString(rand64())), 0, now(), claim
 FROM (SELECT number, (1 + number % 4) * 1000000 AS claim FROM numbers($N_STATE))"
chq "INSERT INTO checkpoints SELECT 's', 0, 'offsets', '', 0, 0, claim + v, v, v, 0, '', 0, now(), claim
 FROM (SELECT (1 + intDiv(number, 100)) * 1000000 AS claim, 1 + number % 100 AS v FROM numbers(400))"
W="stream = 's' AND partition = 0"
Q_OLD="SELECT count(), sum(length(s)) FROM (SELECT account, argMax(state, version) AS s FROM checkpoints WHERE $W AND row_kind = 'state' AND version IN (SELECT version FROM checkpoints WHERE $W AND row_kind = 'offsets') GROUP BY account)"
L="(claim = 4000000 OR (claim = 3000000 AND version <= 3000100) OR (claim = 2000000 AND version <= 2000100) OR (claim = 1000000 AND version <= 1000100))"
Q_NEW="SELECT count(), sum(length(s)) FROM (SELECT account, argMax(state, version) AS s FROM checkpoints WHERE $W AND row_kind = 'state' AND $L AND version IN (SELECT version FROM checkpoints WHERE $W AND row_kind = 'offsets' AND $L) GROUP BY account)"
time_ms() { local t0 t1; t0=$(date +%s%N); chq "$1" >/dev/null; t1=$(date +%s%N); echo $(( (t1 - t0) / 1000000 )); }
old=(); new=()
for _ in 1 2 3 4 5; do old+=("$(time_ms "$Q_OLD")"); new+=("$(time_ms "$Q_NEW")"); done
med() { printf '%s\n' "$@" | sort -n | sed -n 3p; }
echo "rows: $(chq "SELECT count() FROM checkpoints")  result old: $(chq "$Q_OLD")  new: $(chq "$Q_NEW")"
echo "state query, median of 5 (ms): before $(med "${old[@]}") [${old[*]}], fenced $(med "${new[@]}") [${new[*]}]"
chq "DROP DATABASE $DB" default
