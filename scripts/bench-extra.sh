#!/usr/bin/env bash
# The benchmarks that need a running `tally run` or a large state (called by bench.sh, after
# its release build; each has its own topics and database):
# 1. produce-to-visible latency at RATE events/s for SECONDS (p50/p95/p99);
# 2. state bytes per account with 3 lots, admins and alert thresholds;
# 3. recovery of RECOVERY_ACCOUNTS accounts: an idle `tally run --drain` over their state.
# BIN: the tally binary (default target/release/tally of CARGO_TARGET_DIR); LATENCY=0 skips
# 1 and 2, RECOVERY=0 skips 3; EXTRA_DB prefixes the databases and topics (default tally:
# tally_latency, tally_recovery); WORK is where the event files go (default .stack).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TALLY="${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/tally}"
PREFIX="${EXTRA_DB:-tally}"
WORK="${WORK:-$ROOT/.stack}"
mkdir -p "$WORK"
ACCOUNTS="${ACCOUNTS:-10000}"
RATE="${RATE:-10000}"
SECONDS_LONG="${SECONDS_LONG:-30}"
RECOVERY_ACCOUNTS="${RECOVERY_ACCOUNTS:-1000000}"
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }
now() { date +%s.%N; }
fresh() {   # fresh NAME: topics, group and database of their own
  local run="${PREFIX}_$1-$(date +%s)"
  export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
  export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
  export TALLY_CLICKHOUSE__DATABASE="${PREFIX}_$1" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
  export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
  ch "DROP DATABASE IF EXISTS ${PREFIX}_$1" >/dev/null
  "$TALLY" migrate >/dev/null
}

if [ "${LATENCY:-1}" != 0 ]; then
echo "== produce to ledger visible at $RATE events/s for ${SECONDS_LONG}s, $ACCOUNTS accounts (flush_interval 1s)"
fresh latency
python3 scripts/bench-events.py --accounts "$ACCOUNTS" --grants > "$WORK"/bench-grants.jsonl
"$TALLY" send "$WORK"/bench-grants.jsonl >/dev/null
"$TALLY" run --drain >/dev/null 2>&1
"$TALLY" run >/dev/null 2>"$WORK"/bench-latency-run.log &
run_pid=$!
python3 scripts/bench-latency.py --rate "$RATE" --seconds "$SECONDS_LONG" --accounts "$ACCOUNTS"
kill -TERM "$run_pid"; wait "$run_pid" || true

echo "== state bytes per account (3 lots, 1 admin, alert marks), latest state of each account"
ch "SELECT round(avg(length(s))), max(length(s)) FROM (SELECT account, argMax(state, version) AS s
    FROM $TALLY_CLICKHOUSE__DATABASE.checkpoints WHERE row_kind = 'state' GROUP BY account)"

fi

if [ "${RECOVERY:-1}" != 0 ]; then
echo "== recovery of $RECOVERY_ACCOUNTS accounts (one grant each), idle restart"
fresh recovery
python3 - "$RECOVERY_ACCOUNTS" > "$WORK"/bench-recovery.jsonl <<'EOF'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"specversion": "1.0", "type": "credit.grant", "id": f"g-{i}", "source": "billing",
                      "subject": f"acct-{i:07d}", "time": "2026-11-01T00:00:00Z",
                      "data": {"kind": "purchased", "credits": 100, "expires_at": None}}))
EOF
t0=$(now); "$TALLY" send --stamp-event-time "$WORK"/bench-recovery.jsonl >/dev/null; t1=$(now)
"$TALLY" run --drain >/dev/null 2>&1; t2=$(now)
"$TALLY" run --drain >/dev/null 2>&1; t3=$(now)
rows=$(ch "SELECT count() FROM $TALLY_CLICKHOUSE__DATABASE.checkpoints")
python3 -c "print(f'send {$t1 - $t0:.1f}s, first drain {$t2 - $t1:.1f}s, idle restart over $RECOVERY_ACCOUNTS accounts {$t3 - $t2:.1f}s ({$rows} checkpoint rows)')"
fi
