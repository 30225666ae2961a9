#!/usr/bin/env bash
# Stops the local stack started by stack-up.sh. Idempotent. --clean also removes its data and
# logs (ClickHouse data, tansu SQLite file, mails), keeping the maildev npm install.
# Naming services (clickhouse, tansu, maildev) stops only those, e.g. for outage tests.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

clean=false
services=()
for arg in "$@"; do
  case $arg in
    --clean) clean=true ;;
    clickhouse | tansu | maildev) services+=("$arg") ;;
    *) die "unknown argument $arg (expected --clean, clickhouse, tansu or maildev)" ;;
  esac
done
((${#services[@]})) || services=(tansu maildev clickhouse)
for service in "${services[@]}"; do
  case $service in
    tansu)
      stop_service tansu "tansu broker --listener-url tcp://$HOST:$KAFKA_PORT"
      rm -f "$STACK/tansu.storage"
      ;;
    maildev) stop_service maildev "$STACK/maildev/node_modules/.bin/maildev" ;;
    clickhouse) stop_service clickhouse "clickhouse-server --config-file=$STACK/clickhouse/config.xml" ;;
  esac
done

if $clean; then
  clickhouse_remove_data "$STACK/clickhouse"
  rm -rf "$STACK/tansu" "$STACK/maildev/mail" "$LOGS"
  log "removed stack data and logs under $STACK (kept $STACK/maildev/node_modules)"
fi
