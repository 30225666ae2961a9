# Shared helpers and settings for the local-stack scripts (sourced, not run).
# shellcheck shell=bash disable=SC2034  # settings are used by the scripts that source this

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/.stack"
LOGS="$STACK/logs"
HOST=127.0.0.1
CH_HTTP_PORT=8123
CH_TCP_PORT=9000
KAFKA_PORT=9092
SMTP_PORT=1025
MAILDEV_WEB_PORT=1080
DEADLINE="${STACK_DEADLINE:-120}"   # seconds to wait for a service to answer
TANSU="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
CLICKHOUSE_SERVER=/usr/sbin/clickhouse-server   # /usr/sbin is not always on PATH
MAILDEV="$STACK/maildev/node_modules/.bin/maildev"

log() { echo "[stack] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# pid_alive NAME: true if .stack/NAME.pid names a live process.
pid_alive() {
  local f="$STACK/$1.pid"
  [[ -s $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start_bg NAME DIR CMD...: start CMD detached in DIR, own session, pid in .stack/NAME.pid,
# stdout+stderr appended to .stack/logs/NAME.log.
start_bg() {
  local name=$1 dir=$2; shift 2
  mkdir -p "$LOGS" "$dir"
  echo "=== $(date -Is) starting: $*" >>"$LOGS/$name.log"
  # Redirect the whole subshell and exec through it, so that no process keeps the caller's
  # stdout open (a `stack-up.sh | tail` would hang) and the pid file names the service itself.
  # shellcheck disable=SC2016  # $$, $0 and $@ belong to the inner bash
  (cd "$dir" && exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$STACK/$name.pid" "$@") \
    >>"$LOGS/$name.log" 2>&1 </dev/null &
}

# port_open PORT: true if 127.0.0.1:PORT accepts a TCP connection.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null; }

# wait_for NAME CHECK...: poll CHECK until it succeeds; fail with the log tail of NAME if its
# process (pid file) died or DEADLINE passed.
wait_for() {
  local name=$1; shift
  local end=$((SECONDS + DEADLINE)) why=""
  until "$@" >/dev/null 2>&1; do
    if [[ -s $STACK/$name.pid ]] && ! pid_alive "$name"; then why="its process exited"
    elif ((SECONDS >= end)); then why="it did not answer within ${DEADLINE}s"; fi
    if [[ -n $why ]]; then
      log "$name failed: $why; last lines of $LOGS/$name.log:"
      tail -n 40 "$LOGS/$name.log" >&2 2>/dev/null || true
      die "$name not ready"
    fi
    sleep 1
  done
}

# stop_service NAME PKILL_PATTERN: TERM the pid (and its process group), then KILL after 15s;
# falls back to pkill -f on the specific command line when the pid file is gone.
stop_service() {
  local name=$1 pattern=$2 pidf="$STACK/$1.pid" pid=""
  [[ -s $pidf ]] && pid=$(cat "$pidf")
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  else
    pid=""
    pkill -TERM -f -- "$pattern" 2>/dev/null || true
  fi
  local end=$((SECONDS + 15))
  while { [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; } || pgrep -f -- "$pattern" >/dev/null; do
    if ((SECONDS >= end)); then
      [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null
      pkill -KILL -f -- "$pattern" 2>/dev/null || true
      sleep 1; break
    fi
    sleep 0.5
  done
  rm -f "$pidf"
  log "$name stopped"
}
