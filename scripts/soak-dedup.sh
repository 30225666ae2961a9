#!/usr/bin/env bash
# The soak of issue 25: `tally run` live while usage events arrive at RATE a second for
# SECONDS over ACCOUNTS accounts (ids unique, broker timestamps the send time), printing
# every 10 s the process's resident memory and the dedup window's ids (exact and sealed,
# from its metrics). Own topics and database (dropped first); needs the local stack
# (scripts/stack-up.sh) and a release build of tally.
#
#   RATE=20000 SECONDS_=180 ACCOUNTS=100000 STATUS_PORT=31000 bash scripts/soak-dedup.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RATE="${RATE:-20000}"
DURATION="${SECONDS_:-180}"
ACCOUNTS="${ACCOUNTS:-100000}"
STATUS_PORT="${STATUS_PORT:-31000}"
TALLY="${CARGO_TARGET_DIR:-$ROOT/target}/release/tally"
run="soak-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_KAFKA__GROUP_ID="$run"
export TALLY_CLICKHOUSE__DATABASE="tally_soak_dedup" TALLY_STATUS__LISTEN="127.0.0.1:$STATUS_PORT"
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }
ch "DROP DATABASE IF EXISTS tally_soak_dedup" >/dev/null
"$TALLY" migrate >/dev/null
calls=$((RATE * DURATION))
events="$(mktemp /tmp/soak-dedup-XXXX.jsonl)"
python3 scripts/bench-events.py --accounts "$ACCOUNTS" --calls "$calls" --round 1 --days 1 > "$events"
"$TALLY" run >/tmp/soak-dedup-run.log 2>&1 &
tally_pid=$!
trap 'kill "$tally_pid" 2>/dev/null || true; rm -f "$events"' EXIT
# Paced: RATE/10 lines every 100 ms into one `tally send -`.
python3 - "$events" "$RATE" <<'EOF' | "$TALLY" send - >/dev/null 2>&1 &
import sys, time
path, rate = sys.argv[1], int(sys.argv[2])
batch = max(rate // 10, 1)
start = time.monotonic()
with open(path) as f:
    n = 0
    lines = []
    for line in f:
        lines.append(line)
        if len(lines) == batch:
            sys.stdout.write("".join(lines)); sys.stdout.flush()
            n += len(lines); lines = []
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    sys.stdout.write("".join(lines)); sys.stdout.flush()
EOF
sender=$!
metric() { curl -sf "http://127.0.0.1:$STATUS_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
printf '%-6s %-10s %-12s %-12s %-12s\n' second rss_mb applied exact_ids sealed_ids
t0=$(date +%s)
while kill -0 "$sender" 2>/dev/null || [ $(( $(date +%s) - t0 )) -lt $((DURATION + 30)) ]; do
  sleep 10
  rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$tally_pid/status")
  printf '%-6s %-10s %-12s %-12s %-12s\n' $(( $(date +%s) - t0 )) "$rss" \
    "$(metric 'tally_events_applied_total{topic="'"$TALLY_KAFKA__USAGE_TOPIC"'"}')" \
    "$(metric 'tally_dedup_ids{state="exact"}')" "$(metric 'tally_dedup_ids{state="sealed"}')"
  [ $(( $(date +%s) - t0 )) -ge $((DURATION + 60)) ] && break
done
kill -TERM "$tally_pid"
wait "$tally_pid" || true
echo "checkpoint rows: $(ch "SELECT row_kind, count() FROM tally_soak_dedup.checkpoints GROUP BY row_kind FORMAT TSV" | tr '\n' ' ')"
t1=$(date +%s.%N)
TALLY_STATUS__LISTEN="" "$TALLY" run --drain >/dev/null 2>&1
t2=$(date +%s.%N)
python3 -c "print(f'idle restart (run --drain): {$t2 - $t1:.2f} s')"
ch "DROP DATABASE IF EXISTS tally_soak_dedup" >/dev/null
