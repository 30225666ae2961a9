#!/usr/bin/env bash
# Profiles one `tally run --drain` of 200,000 calls over 10,000 accounts (release build,
# the local stack up): perf data in /tmp/perf.data; read it with
# `perf report -i /tmp/perf.data --no-children --sort comm,dso -g none`.
# PERF_DATA: where perf writes (default /tmp/perf.data); PERF_CALL_GRAPH (default -g; e.g.
# "--call-graph dwarf,16384" to unwind without frame pointers) and PERF_FREQ (499). BIN: the binary to profile (default: the release build in $CARGO_TARGET_DIR, else target/).
# PROF_DB: the database (default tally_prof; one per concurrent user). PERF_STAT=1 counts
# instead of sampling: the CPU time of the whole drain (all threads; user-space
# instructions too where the machine has the counters, not on this VM), printed per event
# drained: a figure per step less noisy than the wall clock on a shared machine.
# CALLS: the calls drained (default 200,000). WRAP: a command the drain runs under instead
# of perf (e.g. "valgrind --tool=callgrind --separate-threads=yes": instructions per
# thread, exact; take the difference of two CALLS to leave the start out).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/tally}"
run="prof-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
PROF_DB="${PROF_DB:-tally_prof}"
CALLS="${CALLS:-200000}"
export TALLY_CLICKHOUSE__DATABASE="$PROF_DB" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS $PROF_DB" >/dev/null
"$BIN" migrate >/dev/null
now="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
python3 scripts/bench-events.py --accounts 10000 --grants --days 1 --now "$now" > ".stack/$PROF_DB-grants.jsonl"
"$BIN" send --stamp-event-time ".stack/$PROF_DB-grants.jsonl" >/dev/null
"$BIN" run --drain >/dev/null 2>&1
python3 scripts/bench-events.py --accounts 10000 --calls "$CALLS" --round 1 --days 1 --now "$now" > ".stack/$PROF_DB-round.jsonl"
"$BIN" send --stamp-event-time ".stack/$PROF_DB-round.jsonl" >/dev/null
t0=$(date +%s.%N)
if [ "${PERF_STAT:-0}" = 1 ]; then
  perf stat -x, -e task-clock,instructions:u -o "/tmp/$PROF_DB-stat.csv" "$BIN" run --drain >/dev/null 2>"/tmp/$PROF_DB-run.log"
  awk -F, -v calls="$CALLS" '$3 == "task-clock" { printf "CPU per event: %.2f us\n", $1 * 1000 / calls }
    $3 == "instructions:u" && $1 + 0 > 0 { printf "instructions per event: %.0f\n", $1 / calls }' "/tmp/$PROF_DB-stat.csv"
elif [ -n "${WRAP:-}" ]; then
  $WRAP "$BIN" run --drain >/dev/null 2>"/tmp/$PROF_DB-run.log"
else
  perf record -F "${PERF_FREQ:-499}" ${PERF_CALL_GRAPH:--g} -o "${PERF_DATA:-/tmp/perf.data}" "$BIN" run --drain >/dev/null 2>"/tmp/$PROF_DB-run.log"
fi
t1=$(date +%s.%N)
python3 -c "print('drain', $CALLS/($t1-$t0), 'events/s')"
