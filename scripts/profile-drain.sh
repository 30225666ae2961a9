#!/usr/bin/env bash
# Profiles one `tally run --drain` of 200,000 calls over 10,000 accounts (release build,
# the local stack up): perf data in /tmp/perf.data; read it with
# `perf report -i /tmp/perf.data --no-children --sort comm,dso -g none`.
# PERF_DATA: where perf writes (default /tmp/perf.data); PERF_CALL_GRAPH (default -g; e.g.
# "--call-graph dwarf,16384" to unwind without frame pointers) and PERF_FREQ (499). BIN: the binary to profile (default: the release build in $CARGO_TARGET_DIR, else target/).
# PROF_DB: the database (default tally_prof; one per concurrent user). PERF_STAT=1 counts
# instead of sampling: user-space instructions and cycles of the whole drain, printed per
# event drained (the step-by-step figure: wall clock is noisy on a shared machine).
# PERF_EVENT: what perf record samples (e.g. "instructions:u", with PERF_FREQ as a period
# via PERF_PERIOD), so `--sort comm` splits instructions by thread.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/tally}"
run="prof-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
PROF_DB="${PROF_DB:-tally_prof}"
export TALLY_CLICKHOUSE__DATABASE="$PROF_DB" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS $PROF_DB" >/dev/null
"$BIN" migrate >/dev/null
now="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
python3 scripts/bench-events.py --accounts 10000 --grants --days 1 --now "$now" > ".stack/$PROF_DB-grants.jsonl"
"$BIN" send --stamp-event-time ".stack/$PROF_DB-grants.jsonl" >/dev/null
"$BIN" run --drain >/dev/null 2>&1
python3 scripts/bench-events.py --accounts 10000 --calls 200000 --round 1 --days 1 --now "$now" > ".stack/$PROF_DB-round.jsonl"
"$BIN" send --stamp-event-time ".stack/$PROF_DB-round.jsonl" >/dev/null
t0=$(date +%s.%N)
if [ "${PERF_STAT:-0}" = 1 ]; then
  perf stat -x, -e instructions:u,cycles:u -o "/tmp/$PROF_DB-stat.csv" "$BIN" run --drain >/dev/null 2>"/tmp/$PROF_DB-run.log"
  awk -F, '/instructions|cycles/ { printf "%s per event: %.0f\n", $3, $1 / 200000 }' "/tmp/$PROF_DB-stat.csv"
elif [ -n "${PERF_EVENT:-}" ]; then
  perf record -e "$PERF_EVENT" -c "${PERF_PERIOD:-1000000}" ${PERF_CALL_GRAPH:--g} -o "${PERF_DATA:-/tmp/perf.data}" "$BIN" run --drain >/dev/null 2>"/tmp/$PROF_DB-run.log"
else
  perf record -F "${PERF_FREQ:-499}" ${PERF_CALL_GRAPH:--g} -o "${PERF_DATA:-/tmp/perf.data}" "$BIN" run --drain >/dev/null 2>"/tmp/$PROF_DB-run.log"
fi
t1=$(date +%s.%N)
python3 -c "print('drain', 200000/($t1-$t0), 'events/s')"
