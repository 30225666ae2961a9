#!/usr/bin/env bash
# The demo: starts the local stack, creates the schema, sends a realistic sample of grants
# and AI calls, runs tally until it has caught up, and prints balances and daily reports.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "starting the local stack (installs what is missing)"
bash scripts/stack-up.sh

step "building tally"
cargo build --release --quiet
tally() { "$ROOT/target/release/tally" "$@"; }

# A fresh deployment per demo run: its own topics, group and database.
run_id="demo-$(date +%Y%m%d%H%M%S)"
export TALLY_KAFKA__USAGE_TOPIC="$run_id.ai.usage"
export TALLY_KAFKA__COMMANDS_TOPIC="$run_id.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run_id.tally.dlq"
export TALLY_KAFKA__GROUP_ID="$run_id"
export TALLY_CLICKHOUSE__DATABASE="tally_demo"
curl -sf http://127.0.0.1:8123/ --data-binary "DROP DATABASE IF EXISTS tally_demo" >/dev/null

step "tally migrate"
tally migrate

step "sending a sample: 3 accounts, 3 services, 7 users, 3 days, plus grants"
python3 scripts/sample-events.py --days 3 > "$ROOT/.stack/demo-events.jsonl"
tally send "$ROOT/.stack/demo-events.jsonl"

step "tally run --drain (applies everything sent, then exits)"
tally run --drain

for account in acme globex initech; do
  step "tally balance $account"
  tally balance "$account"
done

from=$(date -u -d '4 days ago' +%F)
to=$(date -u -d 'tomorrow' +%F)
step "tally report daily --from $from --to $to --by service"
tally report daily --from "$from" --to "$to" --by service
step "tally report daily --from $from --to $to --account acme --by user"
tally report daily --from "$from" --to "$to" --account acme --by user
step "tally ledger acme (last 8 rows)"
tally ledger acme | tail -n 8
step "tally report monthly --month $(date -u +%Y-%m)"
tally report monthly --month "$(date -u +%Y-%m)"
step "tally history acme"
tally history acme

for account in acme globex initech; do
  step "tally alerts $account (low-credit emails decided and sent by tally run)"
  tally alerts "$account"
done
step "low-credit emails captured by maildev (http://127.0.0.1:1080)"
curl -sf http://127.0.0.1:1080/email | python3 -c '
import json, sys
for m in json.load(sys.stdin):
    to = ", ".join(a["address"] for a in m.get("to", []))
    print(m.get("date", ""), " to", to + ":", m.get("subject", ""))
'
step "tally serve (HTTP API, ingest and dashboard) in the background"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$ROOT/scripts/lib.sh"
# The demo's own server from an earlier run, if any, by its pid file.
if pid_alive serve; then kill "$(cat "$STACK/serve.pid")"; fi
listen="${TALLY_SERVE__LISTEN:-127.0.0.1:8080}"
key_file="$STACK/demo-api-keys"
if [[ ! -s $key_file ]]; then
  umask 077
  printf 'admin=demo-admin-%s\naccount:acme=demo-acme-%s\n' \
    "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" "$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" >"$key_file"
fi
admin_key=$(sed -n 's/^admin=//p' "$key_file")
acme_key=$(sed -n 's/^account:acme=//p' "$key_file")
TALLY_SERVE__LISTEN="$listen" TALLY_SERVE__KEYS_FILE="$key_file" \
  start_bg serve "$ROOT" "$ROOT/target/release/tally" serve
for _ in $(seq 1 100); do
  curl -sf "http://$listen/healthz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$listen/healthz" >/dev/null || die "tally serve did not start; see $LOGS/serve.log"
curl -sf -H "Authorization: Bearer $admin_key" "http://$listen/v1/accounts/acme/balance" | head -c 300; echo

step "done"
echo "Open http://127.0.0.1:1080 to read the emails (HTML and text), or: curl http://127.0.0.1:1080/email"
echo "Try: TALLY_CLICKHOUSE__DATABASE=tally_demo target/release/tally balance acme --json"
echo "API keys (in $key_file): admin $admin_key, acme only $acme_key"
echo "API: curl -H 'Authorization: Bearer $admin_key' http://$listen/v1/reports/daily?from=$from\&to=$to\&by=service"
echo "Dashboard: http://$listen/#key=$admin_key"
