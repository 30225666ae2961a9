#!/usr/bin/env bash
# Every statement tally sends also runs on a current ClickHouse engine (issue 24, point 6).
#
# 1. Capture: a ClickHouse 18.16 of its own (ports picked free, data under
#    .stack/current-engine/, stopped at the end) logs every query (`log_queries=1` in its
#    profile, `system.query_log`). A representative workload runs against it: `tally
#    migrate` (twice, the second time with the added columns dropped, so the ALTERs run),
#    grants, settings, calls, a void and duplicates sent to Kafka, `tally run` with `tally
#    serve` beside it (checks, holds, a release and every API read), SIGTERM, `tally run
#    --drain` again (a restart loads the checkpoint), small flushes and snapshots (the
#    checkpoint deletions), a test email, and every report command.
# 2. Replay (scripts/check-current-engine.py): every distinct statement tally sent, in
#    order (DDL, then inserts, then reads and mutations), on chdb (PyPI, a current engine
#    embedded in Python, in a venv under .stack/) in a session database. Fails on any
#    error, printing the statement and the error; reports how many statements and shapes
#    it ran.
#
# 3. The cluster: the core of the workload again on the local two-shard cluster
#    (scripts/stack-cluster.sh), and its statements replayed on chdb too (see
#    check-current-engine.py --cluster for what a current engine is asked there).
#
#   bash scripts/check-current-engine.sh              # capture and replay
#   bash scripts/check-current-engine.sh --self-test  # replay the last capture plus one
#       statement that 18.16 accepts and current engines refuse: passes only if the check fails
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHDB_VERSION=4.4.0
VENV="$STACK/chdb-venv"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
TALLY="$TARGET/debug/tally"
BASE="$STACK/current-engine"
LAST="$BASE/last-capture"
mkdir -p "$BASE" "$LOGS"
# A failed run's logs stay for an hour.
find "$BASE" -mindepth 1 -maxdepth 1 -name 'cur*' -mmin +60 -exec rm -rf {} +

if ! "$VENV/bin/python" -c "import chdb, sys; sys.exit(chdb.__version__ != '$CHDB_VERSION')" 2>/dev/null; then
  log "pip install chdb==$CHDB_VERSION (into $VENV)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "chdb==$CHDB_VERSION" >>"$LOGS/install-pip.log" 2>&1 ||
    { tail -n 20 "$LOGS/install-pip.log" >&2; die "pip install chdb failed"; }
fi
REPLAY=("$VENV/bin/python" "$ROOT/scripts/check-current-engine.py")

if [[ ${1:-} == --self-test ]]; then
  [[ -s $LAST/statements.jsonl ]] || die "--self-test replays the last capture: run the check once first"
  # tests/compaction.rs's query before issue 24: 18.16 runs it, 26.x wants an alias.
  bad="SELECT count() FROM (SELECT DISTINCT partition FROM checkpoints ANY INNER JOIN \
(SELECT partition, max(version) AS v FROM checkpoints GROUP BY partition) USING partition)"
  out=$("${REPLAY[@]}" "$LAST" --extra-read "$bad" 2>&1) && {
    echo "$out" >&2
    die "self-test: the check passed a statement the current engine refuses"
  }
  grep -q "ANY INNER JOIN" <<<"$out" || { echo "$out" >&2; die "self-test: the failure did not name the statement"; }
  log "self-test: the check failed on the wrong statement, naming it:"
  grep -A3 "^FAILED" <<<"$out" | head -n 6 >&2
  exit 0
fi

bash "$ROOT/scripts/stack-up.sh"
(cd "$ROOT" && cargo build --quiet --bin tally)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NAME="cur$(date +%s)$$"
WORK="$BASE/$NAME"
CH_DIR="$WORK/clickhouse"
CAP_HTTP=$(free_port)
CAP_TCP=$(free_port)
CAP="http://$HOST:$CAP_HTTP"
mkdir -p "$CH_DIR"/{data,tmp}

pids=()
ch_pid=""
# stop_capture: stops the capturing server and removes its data. The server writes there
# (query log flushes, merges) until it has exited, so removing first can fail.
stop_capture() {
  if [[ -n $ch_pid ]]; then
    kill "$ch_pid" 2>/dev/null || true
    while kill -0 "$ch_pid" 2>/dev/null; do wait "$ch_pid" 2>/dev/null || true; done
    ch_pid=""
  fi
  rm -rf "$CH_DIR"
}
cleanup() {
  local code=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  stop_capture
  exit "$code"
}
trap cleanup EXIT INT TERM

# ---- the capturing 18.16 -----------------------------------------------------------------
# It only records statements, so its data stays in $WORK, which a failed run leaves for an hour.
CH_DISK_OFF=1
clickhouse_config "$CH_DIR" "$WORK/clickhouse" 268435456 \
  "<http_port>$CAP_HTTP</http_port><tcp_port>$CAP_TCP</tcp_port>" \
  "<query_log><database>system</database><table>query_log</table><flush_interval_milliseconds>1000</flush_interval_milliseconds></query_log>" \
  "<log_queries>1</log_queries>"
"$CLICKHOUSE_SERVER" --config-file="$CH_DIR/config.xml" >"$WORK/clickhouse.out" 2>&1 &
ch_pid=$!
end=$((SECONDS + 60))
until [[ $(curl -s "$CAP/ping") == Ok.* ]]; do
  kill -0 "$ch_pid" 2>/dev/null || { tail -n 20 "$WORK/clickhouse.err.log" >&2; die "capture ClickHouse exited"; }
  ((SECONDS < end)) || die "capture ClickHouse did not answer within 60 s"
  sleep 0.2
done
# The script's own statements carry a query id of their own, so the capture leaves them out.
own() { curl -sS --fail-with-body "$CAP/?query_id=capture-$RANDOM$RANDOM&database=${2:-default}" --data-binary "$1"; }

# ---- the workload --------------------------------------------------------------------------
SERVE_PORT=$(free_port)
RUN_PORT=$(free_port)
ADMIN_KEY="cur-admin-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
DB="tally_$NAME"
export TALLY_CONFIG="$ROOT/config/tally.toml"
export TALLY_CLICKHOUSE__URL="$CAP"
export TALLY_CLICKHOUSE__DATABASE="$DB"
export TALLY_KAFKA__USAGE_TOPIC="$NAME.ai.usage"
export TALLY_KAFKA__COMMANDS_TOPIC="$NAME.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$NAME.tally.dlq"
export TALLY_KAFKA__GROUP_ID="$NAME-group"
export TALLY_KAFKA__PARTITIONS=2
export TALLY_PIPELINE__FLUSH_INTERVAL=200ms
export TALLY_PIPELINE__MAX_BATCH_EVENTS=50
export TALLY_PIPELINE__SNAPSHOT_MIN_ROWS=100
export TALLY_PIPELINE__ROLLUP_SEGMENT_RECORDS=100
export TALLY_STATUS__LISTEN="127.0.0.1:$RUN_PORT"
export TALLY_STATUS__TOKEN="cur-internal-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export TALLY_SERVE__LISTEN="127.0.0.1:$SERVE_PORT"
export TALLY_SERVE__KEYS="admin=$ADMIN_KEY"
t() { "$TALLY" "$@" >>"$WORK/tally.log" 2>&1 || { tail -n 30 "$WORK/tally.log" >&2; die "tally $* failed"; }; }

log "capture: workload against a ClickHouse 18.16 on $CAP (database $DB)"
t migrate
# The columns added after the first release: dropped, so the second migrate adds them.
for col in "daily_usage flex" "lots expired" "lots from_plan" "ledger hold_id" "ledger hold_outcome" "ledger hold_held" \
  "ledger partition" "lots partition" "balances partition" "daily_rollups partition" "checkpoints claim"; do
  set -- $col
  own "ALTER TABLE $1 DROP COLUMN $2" "$DB" >/dev/null
done
t migrate

python3 "$ROOT/scripts/sample-events.py" --days 3 >"$WORK/events.jsonl"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cat >>"$WORK/events.jsonl" <<EOF
{"specversion":"1.0","type":"account.settings","id":"set-1","source":"admin","subject":"acme","time":"$now","data":{"timezone":"Asia/Seoul","locale":"ko","admins":["ops@acme.kr"],"flex":{"enabled":true,"threshold":5000}}}
{"specversion":"1.0","type":"account.plan","id":"plan-1","source":"admin","subject":"globex","time":"$now","data":{"plan":"pro","anchor":"$now"}}
{"specversion":"1.0","type":"credit.grant","id":"g-void","source":"admin","subject":"initech","time":"$now","data":{"lot":"gone","kind":"promotional","credits":10,"expires_at":null}}
{"specversion":"1.0","type":"credit.void","id":"v-1","source":"admin","subject":"initech","time":"$now","data":{"lot":"gone","reason":"test"}}
EOF
t send "$WORK/events.jsonl"
t grant acme --credits 5000 --kind purchased

"$TALLY" run >"$WORK/run.log" 2>&1 &
run_pid=$!
pids+=("$run_pid")
"$TALLY" serve >"$WORK/serve.log" 2>&1 &
pids+=($!)
end=$((SECONDS + 120))
for port in "$SERVE_PORT" "$RUN_PORT"; do
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz") == 200 ]]; do
    ((SECONDS < end)) || { tail -n 30 "$WORK/run.log" "$WORK/serve.log" >&2; die "tally not ready within 120 s"; }
    sleep 0.2
  done
done
api() {   # api METHOD PATH [BODY]: any answer but a 5xx will do; the statements are the point
  local code
  code=$(curl -s -o "$WORK/api.out" -w '%{http_code}' -X "$1" -H "Authorization: Bearer $ADMIN_KEY" \
    -H 'Content-Type: application/json' ${3:+--data-binary "$3"} "http://127.0.0.1:$SERVE_PORT$2")
  [[ $code != 5* && $code != 000 ]] || { cat "$WORK/api.out" >&2; die "API $1 $2 answered $code"; }
}
from=$(date -u -d '5 days ago' +%F)
to=$(date -u -d 'tomorrow' +%F)
month=$(date -u +%Y-%m)
api POST /v1/check '{"account":"acme","feature":"erase"}'
api POST /v1/holds '{"id":"h-1","account":"acme","feature":"erase","ttl":60}'
api POST /v1/holds '{"id":"h-2","account":"globex","feature":"erase","ttl":0}'
api DELETE /v1/holds/h-1?account=acme
for path in /v1/whoami /v1/accounts /v1/matrix /v1/plans \
  "/v1/reports/daily?from=$from&to=$to" "/v1/reports/daily?from=$from&to=$to&account=acme&by=user,feature" \
  "/v1/reports/monthly?month=$month" "/v1/reports/monthly?from=$from&to=$to&account=globex" /readyz /; do
  api GET "$path"
done
for account in acme globex initech nobody; do
  for what in balance ledger history alerts; do api GET "/v1/accounts/$account/$what"; done
done
kill -TERM "$run_pid"
wait "$run_pid" || { tail -n 30 "$WORK/run.log" >&2; die "tally run did not stop cleanly"; }
# A restart loads the checkpoint (states, dedup keys, open days) and drains the rest.
t send "$WORK/events.jsonl"
t run --drain
t test-email acme --to ops@acme.kr
t tick
t run --drain
t status
for account in acme globex initech; do
  t balance "$account"
  t ledger "$account"
  t history "$account"
  t alerts "$account"
  t --json balance "$account"
done
t report daily --from "$from" --to "$to"
t report daily --from "$from" --to "$to" --by service
t report daily --from "$from" --to "$to" --account acme --by user --by feature
t report monthly --month "$month"
t report monthly --from "$from" --to "$to" --account acme
for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
pids=()

# ---- read the statements back ------------------------------------------------------------
own "SYSTEM FLUSH LOGS" >/dev/null
own "SELECT query, Settings.Names, Settings.Values, exception FROM system.query_log
     WHERE type = 2 AND query_id NOT LIKE 'capture-%' AND query NOT LIKE '%system.query_log%'
     ORDER BY event_time, query_start_time FORMAT JSONEachRow" >"$WORK/query_log.jsonl"
# Distinct statements, and for each INSERT the rows of its table in its columns as RowBinary
# (what tally sends), for the replay.
"${REPLAY[@]}" --prepare "$WORK" "$DB" "$CAP"
rm -rf "$LAST"
mkdir -p "$LAST"
cp -r "$WORK/statements.jsonl" "$WORK/tables" "$LAST/"
stop_capture
"${REPLAY[@]}" "$LAST"

# ---- the cluster's statements ----------------------------------------------------------------
# The same workload's core (migrate twice, send, run --drain, reads) on the local cluster of
# two replicas (scripts/stack-cluster.sh, whose servers log queries): the statements tally
# sends only to a cluster (DDL ON CLUSTER, Replicated and Distributed engines) and the
# settings it adds there (quorum, sequential consistency, Distributed reads and inserts),
# read back from both servers' query logs. (The two-shard cluster gets the same statements
# with fewer settings: one replica per shard needs no quorum.)
bash "$ROOT/scripts/stack-cluster.sh"
S1=$(sed -n 's/^CLUSTER_REPLICATED_R1=//p' "$STACK/cluster.env")
S2=$(sed -n 's/^CLUSTER_REPLICATED_R2=//p' "$STACK/cluster.env")
CDB="tally_${NAME}_cluster"
since=$(curl -sS "$S1/" --data-binary "SELECT now()")
export TALLY_CLICKHOUSE__URL="$S1" TALLY_CLICKHOUSE__DATABASE="$CDB"
export TALLY_CLICKHOUSE__CLUSTER__NAME=tally_replicated TALLY_CLICKHOUSE__CLUSTER__SHARDS="$S1,$S2"
export TALLY_KAFKA__USAGE_TOPIC="$NAME.c.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$NAME.c.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$NAME.c.tally.dlq" TALLY_KAFKA__GROUP_ID="$NAME-c-group"
cluster_done() {
  for db in "$CDB" "${CDB}_local"; do
    curl -sS "$S1/?query_id=capture-$RANDOM$RANDOM" --data-binary "DROP DATABASE IF EXISTS $db ON CLUSTER tally_replicated" >/dev/null || true
  done
}
t migrate
t migrate
t send "$WORK/events.jsonl"
t grant acme --credits 5000 --kind purchased
t run --drain
for account in acme globex initech; do t balance "$account"; t ledger "$account"; t history "$account"; done
t report daily --from "$from" --to "$to"
t report monthly --month "$month"
t status
: >"$WORK/cluster_log.jsonl"
for url in "$S1" "$S2"; do
  curl -sS "$url/?query_id=capture-$RANDOM$RANDOM" --data-binary "SYSTEM FLUSH LOGS" >/dev/null
  # Only what tally sent over HTTP: not the servers' own DDL work nor Distributed sub-queries.
  curl -sS --fail-with-body "$url/?query_id=capture-$RANDOM$RANDOM" --data-binary "
    SELECT query, Settings.Names, Settings.Values, exception FROM system.query_log
    WHERE type = 2 AND interface = 2 AND event_time >= toDateTime('$since')
      AND query_id NOT LIKE 'capture-%' AND http_user_agent NOT LIKE 'curl%'
      AND query NOT LIKE '%system.query_log%'
    ORDER BY event_time, query_start_time FORMAT JSONEachRow" >>"$WORK/cluster_log.jsonl"
done
cluster_done
"${REPLAY[@]}" --prepare-cluster "$WORK"
cp "$WORK/cluster-statements.jsonl" "$LAST/"
"${REPLAY[@]}" --cluster "$LAST"
rm -rf "$WORK"
