#!/usr/bin/env bash
# Installs (if missing) and starts the local stack on 127.0.0.1: ClickHouse 8123/9000, tansu
# (Kafka API) 9092, maildev SMTP 1025 + REST 1080. Idempotent; TALLY_STACK_STORAGE=sqlite
# gives tansu durable storage in .stack/tansu/ instead of memory.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
stop_other_checkouts
mkdir -p "$LOGS"

# ---- installs ----------------------------------------------------------------------------
missing=()
[[ -x $CLICKHOUSE_SERVER ]] || missing+=(clickhouse-server)
command -v clickhouse-client >/dev/null || missing+=(clickhouse-client)
command -v curl >/dev/null || missing+=(curl)
command -v pgrep >/dev/null || missing+=(procps)
command -v chromium >/dev/null || missing+=(chromium)   # the dashboard's browser test
# Korean glyphs for the dashboard's screenshots (without them, Korean pages render as boxes).
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || missing+=(fonts-noto-cjk)
if ((${#missing[@]})); then log "apt-get install ${missing[*]}"; apt_install "${missing[@]}"; fi

if [[ ! -x $MAILDEV ]]; then
  log "npm install maildev@2"
  npm install --prefix "$STACK/maildev" maildev@2 --no-audit --no-fund --loglevel=error \
    >>"$LOGS/install-npm.log" 2>&1 || { tail -n 20 "$LOGS/install-npm.log" >&2; die "npm install failed"; }
fi

if ! python3 -c 'import confluent_kafka' 2>/dev/null; then
  log "pip install confluent-kafka"
  python3 -m pip install -q confluent-kafka >>"$LOGS/install-pip.log" 2>&1 ||
    python3 -m pip install -q --break-system-packages confluent-kafka >>"$LOGS/install-pip.log" 2>&1 ||
    { tail -n 20 "$LOGS/install-pip.log" >&2; die "pip install confluent-kafka failed"; }
fi
# The webhook tests' receiver (scripts/webhook-receiver.py) verifies signatures with the
# Standard Webhooks reference package, not tally's code.
if ! python3 -c 'import standardwebhooks' 2>/dev/null; then
  log "pip install standardwebhooks"
  python3 -m pip install -q standardwebhooks >>"$LOGS/install-pip.log" 2>&1 ||
    python3 -m pip install -q --break-system-packages standardwebhooks >>"$LOGS/install-pip.log" 2>&1 ||
    { tail -n 20 "$LOGS/install-pip.log" >&2; die "pip install standardwebhooks failed"; }
fi

ensure_tansu() {
  [[ -x $TANSU ]] && return 0
  if pgrep -f "cargo install tansu" >/dev/null; then
    log "a 'cargo install tansu' is already running; waiting for it (up to 40 min)"
    local end=$((SECONDS + 2400))
    while pgrep -f "cargo install tansu" >/dev/null; do
      ((SECONDS < end)) || die "timed out waiting for the running 'cargo install tansu'"
      sleep 10
    done
  fi
  if [[ ! -x $TANSU ]]; then
    log "cargo install tansu (about 12 minutes; log: $LOGS/install-tansu.log)"
    cargo install tansu --locked --features dynostore,libsql >>"$LOGS/install-tansu.log" 2>&1 ||
      { tail -n 30 "$LOGS/install-tansu.log" >&2; die "cargo install tansu failed"; }
  fi
}

# ---- readiness checks --------------------------------------------------------------------
ch_ping() { [[ $(curl -s "http://$HOST:$CH_HTTP_PORT/ping") == Ok.* ]]; }
maildev_up() { curl -sf "http://$HOST:$MAILDEV_WEB_PORT/email" | grep -q '^\['; }
kafka_metadata() {   # a real Kafka Metadata request through librdkafka
  port_open "$KAFKA_PORT" && python3 - "$HOST:$KAFKA_PORT" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=5)
assert md.brokers, "no brokers in metadata"
EOF
}

# ---- ClickHouse --------------------------------------------------------------------------
start_clickhouse() {
  local d="$STACK/clickhouse"
  clickhouse_config "$d" "$LOGS/clickhouse" 536870912 \
    "<http_port>$CH_HTTP_PORT</http_port><tcp_port>$CH_TCP_PORT</tcp_port>"
  start_bg clickhouse "$d" "$CLICKHOUSE_SERVER" --config-file="$d/config.xml"
}

# ---- tansu -------------------------------------------------------------------------------
start_tansu() {
  local storage="memory://tansu/"
  # sqlite://NAME is resolved relative to the working directory, which start_bg sets.
  [[ ${TALLY_STACK_STORAGE:-memory} == sqlite ]] && storage="sqlite://tansu.db"
  echo "${TALLY_STACK_STORAGE:-memory}" >"$STACK/tansu.storage"
  RUST_LOG="${TANSU_RUST_LOG:-warn}" start_bg tansu "$STACK/tansu" "$TANSU" broker \
    --listener-url "tcp://$HOST:$KAFKA_PORT" \
    --advertised-listener-url "tcp://$HOST:$KAFKA_PORT" \
    --storage-engine "$storage"
}

# ---- maildev -----------------------------------------------------------------------------
start_maildev() {
  rm -rf "$STACK/maildev/mail"   # every start begins with an empty mailbox
  start_bg maildev "$STACK/maildev" "$MAILDEV" --ip "$HOST" --web-ip "$HOST" \
    --smtp "$SMTP_PORT" --web "$MAILDEV_WEB_PORT" --mail-directory "$STACK/maildev/mail"
}

# up NAME CHECK START: start NAME unless it already answers (ours or someone else's).
up() {
  local name=$1 check=$2 start=$3
  if $check >/dev/null 2>&1; then return 0; fi
  if pid_alive "$name"; then return 0; fi   # starting up: just wait for it below
  if [[ $name == tansu ]] && port_open "$KAFKA_PORT"; then
    die "port $KAFKA_PORT is taken but does not answer Kafka metadata"
  fi
  $start
}

up clickhouse ch_ping start_clickhouse
up maildev maildev_up start_maildev
ensure_tansu
up tansu kafka_metadata start_tansu

wait_for clickhouse ch_ping
version=$(curl -sf "http://$HOST:$CH_HTTP_PORT/" --data-binary 'SELECT version()') ||
  die "clickhouse: SELECT version() failed"
log "clickhouse ready on $HOST:$CH_HTTP_PORT (http), $HOST:$CH_TCP_PORT (native), version $version"
wait_for tansu kafka_metadata
running=$(cat "$STACK/tansu.storage" 2>/dev/null || echo unknown)
log "tansu ready on $HOST:$KAFKA_PORT (storage: $running)"
[[ $running == "${TALLY_STACK_STORAGE:-memory}" ]] ||
  log "WARNING: tansu was already running with storage '$running'; run stack-down.sh to switch"
wait_for maildev maildev_up
log "maildev ready: smtp $HOST:$SMTP_PORT, web/api http://$HOST:$MAILDEV_WEB_PORT/email"
