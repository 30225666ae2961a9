#!/usr/bin/env bash
# The secured local stack, beside the plain one (stack-up.sh) and on other ports, for the
# TLS and SASL tests (tests/secure.rs) and a demo against a production-like setup:
#   - tansu with SASL (SCRAM-SHA-512 user `tally`) on 127.0.0.1:19092, sqlite storage in
#     .stack/tansu-secure/;
#   - socat terminating TLS in front of it: SASL_SSL on 127.0.0.1:19093 (tansu advertises
#     this port), and mutual TLS (a client certificate required) on 127.0.0.1:19094;
#   - a second ClickHouse server (data in .stack/clickhouse-secure/): HTTPS 18443, plain HTTP
#     18123 (for test assertions), native 19000;
#   - a test CA, server and client certificates from openssl in .stack/secure-tls/.
# Idempotent: what runs and answers is left alone. Installs socat, openssl, ClickHouse and
# confluent-kafka (the readiness checks) when missing, and waits for a running
# `cargo install tansu`. Writes every address and path to .stack/secure.env (KEY=VALUE).
#   bash scripts/stack-secure.sh          start (or check) it and print the addresses
#   bash scripts/stack-secure.sh --down   stop it (--down --clean also deletes its data)
# Ports can be moved with SECURE_KAFKA_PORT (SASL, plain; +1 TLS, +2 mutual TLS),
# SECURE_CH_HTTP_PORT, SECURE_CH_HTTPS_PORT and SECURE_CH_TCP_PORT.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$LOGS"

SASL_PORT=${SECURE_KAFKA_PORT:-19092}
TLS_PORT=$((SASL_PORT + 1))
MTLS_PORT=$((SASL_PORT + 2))
SCH_HTTP_PORT=${SECURE_CH_HTTP_PORT:-18123}
SCH_HTTPS_PORT=${SECURE_CH_HTTPS_PORT:-18443}
SCH_TCP_PORT=${SECURE_CH_TCP_PORT:-19000}
CERTS="$STACK/secure-tls"
TANSU_DIR="$STACK/tansu-secure"
CH_DIR="$STACK/clickhouse-secure"
KAFKA_USER=tally
PASSWORD_FILE="$CERTS/kafka-password"
ENV_FILE="$STACK/secure.env"

# Several callers (test.sh, each test binary) may start it at once: one at a time. Every
# service is started with fd 9 closed (`9>&-`), so no daemon inherits the lock.
exec 9>"$STACK/secure.lock"
flock -w 900 9 || die "another stack-secure.sh held the lock for 15 minutes"

if [[ ${1:-} == --down ]]; then
  for name in socat-secure-mtls socat-secure tansu-secure clickhouse-secure; do stop_recorded "$name"; done
  if [[ ${2:-} == --clean ]]; then
    clickhouse_remove_data "$CH_DIR"
    rm -rf "$TANSU_DIR" "$CERTS" "$ENV_FILE"
    log "removed the secured stack's data and certificates"
  fi
  exit 0
fi
[[ -z ${1:-} ]] || die "unknown argument $1 (expected nothing or --down [--clean])"
stop_other_checkouts

# ---- installs ----------------------------------------------------------------------------
missing=()
command -v socat >/dev/null || missing+=(socat)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v flock >/dev/null || missing+=(util-linux)
[[ -x $CLICKHOUSE_SERVER ]] || missing+=(clickhouse-server)
if ((${#missing[@]})); then log "apt-get install ${missing[*]}"; apt_install "${missing[@]}"; fi
if ! python3 -c 'import confluent_kafka' 2>/dev/null; then
  log "pip install confluent-kafka"
  python3 -m pip install -q confluent-kafka >>"$LOGS/install-pip.log" 2>&1 ||
    python3 -m pip install -q --break-system-packages confluent-kafka >>"$LOGS/install-pip.log" 2>&1 ||
    { tail -n 20 "$LOGS/install-pip.log" >&2; die "pip install confluent-kafka failed"; }
fi
# ---- certificates --------------------------------------------------------------------------
# A CA, a server certificate for 127.0.0.1 and localhost (used by socat and ClickHouse), and a
# client certificate for mutual TLS. Made once; delete .stack/secure-tls to make new ones.
make_certs() {
  mkdir -p "$CERTS"
  chmod 700 "$CERTS"
  local cnf="$CERTS/openssl.cnf"
  cat >"$cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = tally test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
EOF
  (
    cd "$CERTS"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key
    openssl req -config openssl.cnf -x509 -new -key ca.key -sha256 -days 3650 \
      -subj "/CN=tally test CA" -extensions ca -out ca.pem
    for who in server client; do
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$who.key"
      openssl req -config openssl.cnf -new -key "$who.key" -subj "/CN=tally test $who" -out "$who.csr"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 \
        -days 3650 -extfile openssl.cnf -extensions "$who" -out "$who.pem"
    done
    cat server.pem server.key >server-bundle.pem
    chmod 600 ./*.key server-bundle.pem
  ) >>"$LOGS/secure-certs.log" 2>&1 || { tail -n 20 "$LOGS/secure-certs.log" >&2; die "openssl failed"; }
  log "test CA and certificates made in $CERTS"
}
[[ -s $CERTS/server-bundle.pem && -s $CERTS/client.pem ]] || make_certs
if [[ ! -s $PASSWORD_FILE ]]; then
  (umask 077 && openssl rand -hex 16 >"$PASSWORD_FILE")
fi
PASSWORD=$(cat "$PASSWORD_FILE")

# ---- readiness checks (librdkafka through confluent-kafka, curl) ------------------------------
# kafka_check PORT PROTOCOL [PASSWORD]: a real Metadata request through librdkafka.
kafka_check() {
  port_open "$1" && python3 - "$HOST:$1" "$2" "$KAFKA_USER" "${3:-$PASSWORD}" "$CERTS" <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
brokers, protocol, user, password, certs = sys.argv[1:6]
conf = {"bootstrap.servers": brokers, "security.protocol": protocol}
if protocol.startswith("sasl"):
    conf.update({"sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password})
if protocol.endswith("ssl"):
    conf.update({"ssl.ca.location": f"{certs}/ca.pem", "ssl.certificate.location": f"{certs}/client.pem",
                 "ssl.key.location": f"{certs}/client.key"})
md = AdminClient(conf).list_topics(timeout=5)
assert md.brokers, "no brokers in metadata"
EOF
}
tansu_open() { kafka_check "$SASL_PORT" plaintext; }
tansu_sasl() { kafka_check "$SASL_PORT" sasl_plaintext; }
tls_sasl() { kafka_check "$TLS_PORT" sasl_ssl; }
mtls_sasl() { kafka_check "$MTLS_PORT" sasl_ssl; }
ch_https() { [[ $(curl -s --cacert "$CERTS/ca.pem" "https://127.0.0.1:$SCH_HTTPS_PORT/ping") == Ok.* ]]; }

# ---- ClickHouse with HTTPS ----------------------------------------------------------------------
start_clickhouse_secure() {
  clickhouse_config "$CH_DIR" "$LOGS/clickhouse-secure" 268435456 \
    "<http_port>$SCH_HTTP_PORT</http_port><https_port>$SCH_HTTPS_PORT</https_port><tcp_port>$SCH_TCP_PORT</tcp_port>" \
    "<openSSL>
        <server>
            <certificateFile>$CERTS/server.pem</certificateFile>
            <privateKeyFile>$CERTS/server.key</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>"
  port_open "$SCH_HTTPS_PORT" && die "port $SCH_HTTPS_PORT is taken by another process; set SECURE_CH_HTTPS_PORT"
  start_bg clickhouse-secure "$CH_DIR" "$CLICKHOUSE_SERVER" --config-file="$CH_DIR/config.xml" 9>&-
}
ch_https >/dev/null 2>&1 || pid_alive clickhouse-secure || start_clickhouse_secure
wait_for clickhouse-secure ch_https

# ---- tansu --------------------------------------------------------------------------------------
if [[ ! -x $TANSU ]]; then
  # stack-up.sh builds it (about 12 minutes); one build at a time.
  log "no $TANSU: running scripts/stack-up.sh's install of it"
  if pgrep -f "cargo install tansu" >/dev/null; then
    end=$((SECONDS + 2400))
    while [[ ! -x $TANSU ]] && pgrep -f "cargo install tansu" >/dev/null; do
      ((SECONDS < end)) || die "timed out waiting for the running 'cargo install tansu'"
      sleep 10
    done
  fi
  if [[ ! -x $TANSU ]]; then
    cargo install tansu --locked --features dynostore,libsql >>"$LOGS/install-tansu.log" 2>&1 ||
      { tail -n 30 "$LOGS/install-tansu.log" >&2; die "cargo install tansu failed"; }
  fi
fi


# ---- tansu with SASL --------------------------------------------------------------------------
# tansu 0.6 takes SCRAM users only while it runs without --authentication, and keeps them in
# its storage: create the user on sqlite storage, then restart it with --authentication.
start_tansu() {   # start_tansu [--authentication]
  # sqlite://NAME is resolved relative to the working directory, which start_bg sets.
  RUST_LOG="${TANSU_RUST_LOG:-warn}" start_bg tansu-secure "$TANSU_DIR" "$TANSU" broker \
    --listener-url "tcp://$HOST:$SASL_PORT" \
    --advertised-listener-url "tcp://$HOST:$TLS_PORT" \
    --storage-engine "sqlite://tansu.db" "$@" 9>&-
}
marker="$TANSU_DIR/user-$KAFKA_USER"
if ! pid_alive tansu-secure || [[ ! -e $marker ]]; then
  pid_alive tansu-secure && stop_recorded tansu-secure
  port_open "$SASL_PORT" && die "port $SASL_PORT is taken by another process; set SECURE_KAFKA_PORT"
  mkdir -p "$TANSU_DIR"
  if [[ ! -e $marker ]]; then
    start_tansu
    wait_for tansu-secure port_open "$SASL_PORT"
    # `user create` answers once the broker is up; retried while it starts.
    end=$((SECONDS + DEADLINE))
    until "$TANSU" user create --broker "tcp://$HOST:$SASL_PORT" "$KAFKA_USER" "$PASSWORD" \
        >>"$LOGS/tansu-secure.log" 2>&1; do
      ((SECONDS < end)) || { tail -n 20 "$LOGS/tansu-secure.log" >&2; die "tansu user create failed"; }
      sleep 1
    done
    stop_recorded tansu-secure
    touch "$marker"
    log "SCRAM-SHA-512 user $KAFKA_USER created in $TANSU_DIR/tansu.db"
  fi
  start_tansu --authentication
fi
wait_for tansu-secure tansu_sasl
# A login with a wrong password must be refused, or the stack tests nothing.
if kafka_check "$SASL_PORT" sasl_plaintext wrong-password >/dev/null 2>&1; then
  die "tansu on $SASL_PORT accepts a wrong password: is it running without --authentication?"
fi

# ---- TLS terminators ----------------------------------------------------------------------------
start_socat() {   # start_socat NAME PORT EXTRA-OPENSSL-OPTIONS
  port_open "$2" && die "port $2 is taken by another process; set SECURE_KAFKA_PORT"
  start_bg "$1" "$CERTS" socat \
    "OPENSSL-LISTEN:$2,bind=$HOST,reuseaddr,fork,cert=$CERTS/server-bundle.pem,$3" \
    "TCP:$HOST:$SASL_PORT" 9>&-
}
pid_alive socat-secure || start_socat socat-secure "$TLS_PORT" "verify=0"
pid_alive socat-secure-mtls ||
  start_socat socat-secure-mtls "$MTLS_PORT" "cafile=$CERTS/ca.pem,verify=1"
wait_for socat-secure tls_sasl
wait_for socat-secure-mtls mtls_sasl

cat >"$ENV_FILE" <<EOF
SECURE_KAFKA_SASL=$HOST:$SASL_PORT
SECURE_KAFKA_SASL_SSL=$HOST:$TLS_PORT
SECURE_KAFKA_MTLS=$HOST:$MTLS_PORT
SECURE_KAFKA_USER=$KAFKA_USER
SECURE_KAFKA_PASSWORD_FILE=$PASSWORD_FILE
SECURE_CA_FILE=$CERTS/ca.pem
SECURE_CLIENT_CERT=$CERTS/client.pem
SECURE_CLIENT_KEY=$CERTS/client.key
SECURE_SERVER_CERT=$CERTS/server.pem
SECURE_SERVER_KEY=$CERTS/server.key
SECURE_CH_HTTPS=https://127.0.0.1:$SCH_HTTPS_PORT
SECURE_CH_HTTP=http://127.0.0.1:$SCH_HTTP_PORT
EOF
log "secured stack ready (settings in $ENV_FILE):"
log "  Kafka SASL_PLAINTEXT $HOST:$SASL_PORT, SASL_SSL $HOST:$TLS_PORT, SASL_SSL + client certificate $HOST:$MTLS_PORT"
log "  SCRAM-SHA-512 user $KAFKA_USER, password in $PASSWORD_FILE; CA $CERTS/ca.pem"
log "  ClickHouse https://127.0.0.1:$SCH_HTTPS_PORT (plain http://127.0.0.1:$SCH_HTTP_PORT, native $SCH_TCP_PORT)"
