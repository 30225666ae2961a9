#!/usr/bin/env bash
# Stops the local stack started by stack-up.sh. Idempotent. --clean also removes its data and
# logs (ClickHouse data, tansu SQLite file, mails), keeping the maildev npm install.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop_service tansu "tansu broker --listener-url tcp://$HOST:$KAFKA_PORT"
rm -f "$STACK/tansu.storage"
stop_service maildev "$STACK/maildev/node_modules/.bin/maildev"
stop_service clickhouse "clickhouse-server --config-file=$STACK/clickhouse/config.xml"

if [[ ${1:-} == --clean ]]; then
  rm -rf "$STACK/clickhouse" "$STACK/tansu" "$STACK/maildev/mail" "$LOGS"
  log "removed stack data and logs under $STACK (kept $STACK/maildev/node_modules)"
fi
