#!/usr/bin/env bash
# Bounded queues (issue 22), side by side: a backlog whose commands side lags. SETTINGS
# account settings (about 170 bytes each) come ahead of one grant per account on the
# commands topic, and CALLS usage calls after them in time on the usage topic; everything is
# on the broker before tally starts, so calls arrive while earlier commands are still on the
# broker and wait in their side's queue (tansu shares one byte budget among the partitions
# of a fetch). BASE_BIN (the build before) and BIN (the build after) drain the same topics,
# each into a fresh database of its own, alternating which goes first, ROUNDS times; per
# drain: wall time, records a second and peak RSS (GNU time), and for the after build the
# largest queue of a side and the sides paused (its /metrics on PORT, 7390 by default,
# scraped until it exits). STACK_UP=0 uses the stack as
# it runs. Extra settings for the after build go in AFTER_ENV (e.g.
# "TALLY_PIPELINE__MAX_QUEUED_RECORDS=5000"). The before build reads the shipped config of
# BASE_REV (main by default): an older build refuses keys it does not know.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SETTINGS="${SETTINGS:-300000}"
CALLS="${CALLS:-300000}"
ACCOUNTS="${ACCOUNTS:-2000}"
ROUNDS="${ROUNDS:-3}"
WORK="${WORK:-/tmp/bench-queues}"
: "${BASE_BIN:?the build before (e.g. a release build of main)}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[ "${STACK_UP:-1}" = 0 ] || bash scripts/stack-up.sh
[ -n "${BIN:-}" ] || cargo build --release --quiet --bin tally
AFTER="${BIN:-$TARGET/release/tally}"
mkdir -p "$WORK/base-config"
for file in tally.toml matrix.toml; do
  git show "${BASE_REV:-main}:config/$file" > "$WORK/base-config/$file"
done

run="bench-queues-$(date +%s)"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }

python3 - "$SETTINGS" "$CALLS" "$ACCOUNTS" > "$WORK/events.jsonl" <<'EOF'
import json, sys
from datetime import datetime, timedelta, timezone
settings, calls, accounts = map(int, sys.argv[1:4])
now = datetime.now(timezone.utc).replace(microsecond=0)
ts = lambda at: at.strftime("%Y-%m-%dT%H:%M:%SZ")
def event(ty, id_, source, account, at, data):
    print(json.dumps({"specversion": "1.0", "type": ty, "id": id_, "source": source,
                      "subject": account, "time": ts(at), "data": data}))
for i in range(settings):
    event("account.settings", f"s-{i}", "billing", f"acct-{i % accounts:05}",
          now - timedelta(days=4), {"locale": "en" if i % 2 else "ko"})
for a in range(accounts):
    event("credit.grant", f"pack-{a}", "billing", f"acct-{a:05}", now - timedelta(days=3),
          {"kind": "purchased", "credits": 100000, "expires_at": None})
span = timedelta(days=1).total_seconds()
for i in range(calls):
    at = now - timedelta(days=2) + timedelta(seconds=span * i / calls)
    event("ai.usage", f"call-{i}", "image-studio", f"acct-{(i * 7919) % accounts:05}", at,
          {"user": f"user-{i % 40}", "feature": "text_to_image"})
EOF
records=$((SETTINGS + ACCOUNTS + CALLS))
TALLY_CLICKHOUSE__DATABASE=tally_bq_after "$AFTER" migrate >/dev/null 2>&1
TALLY_CLICKHOUSE__DATABASE=tally_bq_after "$AFTER" send "$WORK/events.jsonl" 2>/dev/null

# The after build's queue metrics, from the last scrape: the largest queue, sides paused.
queues() {
  local peak pauses
  peak=$(grep '^tally_queue_peak_records ' "$WORK/metrics" | cut -d' ' -f2)
  pauses=$(grep '^tally_fetch_pauses_total{reason="full"' "$WORK/metrics" | cut -d' ' -f2 | paste -sd+ | bc)
  echo "${peak:--} ${pauses:--}"
}

# drain NAME BIN [ENV...]: a fresh database and group, then one timed drain.
drain() {
  local name="$1" bin="$2" port="${PORT:-7390}"
  shift 2
  local db="tally_bq_$name"
  ch "DROP DATABASE IF EXISTS $db" >/dev/null
  env TALLY_CLICKHOUSE__DATABASE="$db" TALLY_KAFKA__GROUP_ID="$run-$name-$round" "$@" \
    "$bin" migrate >/dev/null 2>&1
  : > "$WORK/metrics"
  [ "$name" = after ] || port=""
  env TALLY_CLICKHOUSE__DATABASE="$db" TALLY_KAFKA__GROUP_ID="$run-$name-$round" \
    TALLY_STATUS__LISTEN="${port:+127.0.0.1:$port}" "$@" \
    /usr/bin/time -f "%e %M" -o "$WORK/time" "$bin" run --drain >/dev/null 2>"$WORK/$name.log" &
  local pid=$!
  # The peak gauge only grows: the last scrape before the exit holds the drain's largest queue.
  while [ -n "$port" ] && kill -0 "$pid" 2>/dev/null; do
    curl -sf --max-time 1 "http://127.0.0.1:$port/metrics" > "$WORK/metrics.new" &&
      mv "$WORK/metrics.new" "$WORK/metrics"
    sleep 0.2
  done
  wait "$pid"
  read -r seconds rss_kb < "$WORK/time"
  local ledger queue
  ledger=$(ch "SELECT count() FROM $db.ledger FINAL WHERE entry_type = 'usage'")
  queue=$(queues)
  python3 -c "print(f'{\"$name\":<7} {$round:<6} {$seconds:<10} {$records / $seconds:<12.0f} {$rss_kb / 1024:<14.0f} {$ledger:<11} {\"$queue\"}')"
}

echo "== $SETTINGS settings and $ACCOUNTS grants (commands), $CALLS calls (usage) after them, 6 partitions"
printf '%-7s %-6s %-10s %-12s %-14s %-11s %s\n' build round seconds records/s "peak RSS MiB" "usage rows" "largest queue, sides paused"
for round in $(seq 1 "$ROUNDS"); do
  read -ra after_env <<< "${AFTER_ENV:-}"
  if [ $((round % 2)) = 1 ]; then
    drain base "$BASE_BIN" TALLY_CONFIG="$WORK/base-config/tally.toml"
    drain after "$AFTER" "${after_env[@]}"
  else
    drain after "$AFTER" "${after_env[@]}"
    drain base "$BASE_BIN" TALLY_CONFIG="$WORK/base-config/tally.toml"
  fi
done
ch "DROP DATABASE IF EXISTS tally_bq_base" >/dev/null
ch "DROP DATABASE IF EXISTS tally_bq_after" >/dev/null
