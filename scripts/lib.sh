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

# apt_install PKG...: install Debian packages (logged to .stack/logs/install-apt.log),
# running apt-get update only when the install fails, and waiting for another apt-get's lock
# instead of failing (stack scripts may install at the same time).
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local opts=(-y -q -o DPkg::Lock::Timeout=600)
  apt-get install "${opts[@]}" "$@" >>"$LOGS/install-apt.log" 2>&1 ||
    { apt-get update -q -o DPkg::Lock::Timeout=600 >>"$LOGS/install-apt.log" 2>&1 &&
      apt-get install "${opts[@]}" "$@" >>"$LOGS/install-apt.log" 2>&1; } ||
    { tail -n 20 "$LOGS/install-apt.log" >&2; die "apt-get install $* failed"; }
}

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

# stop_pid PID: TERM the process group PID leads (start_bg makes every service a session
# leader), or PID alone when it leads none; KILL after 15 s.
stop_pid() {
  local pid=$1 end=$((SECONDS + 15))
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= end)); then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.2
  done
}

# stop_recorded NAME: stops the process whose pid .stack/NAME.pid records. Only pids the
# stack scripts recorded are signalled.
stop_recorded() {
  local pidf="$STACK/$1.pid"
  [[ -s $pidf ]] || return 0
  stop_pid "$(cat "$pidf")"
  rm -f "$pidf"
  log "$1 stopped"
}

# stop_other_checkouts: stops the stack services that another checkout of tally started
# (their working directory is inside that checkout's .stack), so this checkout starts its
# own: its tests read its own certificates, pid files and data, which another checkout's
# services do not have (and whose folder may be gone). Nothing else is touched.
stop_other_checkouts() {
  local own pid cwd others=()
  own=$(mkdir -p "$STACK" && cd "$STACK" && pwd -P)
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
    # A folder deleted under a running service (a clone replaced at the same path) reads
    # as "PATH (deleted)": that service is not this checkout's either.
    [[ $cwd == */.stack/* && ($cwd != "$own"/* || $cwd == *" (deleted)") ]] && others+=("$pid")
  done
  ((${#others[@]})) || return 0
  log "stopping ${#others[@]} stack service(s) of another checkout (pids ${others[*]})"
  for pid in "${others[@]}"; do stop_pid "$pid"; done
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

# stop_service NAME PKILL_PATTERN: stop_pid on the recorded pid, then on whatever still runs
# with that specific command line.
stop_service() {
  local name=$1 pattern=$2 pidf="$STACK/$1.pid" pid
  [[ -s $pidf ]] && stop_pid "$(cat "$pidf")"
  # What is left: a service whose pid file is gone, or a child that left the group.
  for pid in $(pgrep -f -- "$pattern"); do stop_pid "$pid"; done
  rm -f "$pidf"
  log "$name stopped"
}

# The ClickHouse servers keep their data on a journaled ext4 filesystem of their own: an
# image file mounted once per machine at $CH_DISK. This machine's root filesystem is ext4
# without a journal, and there ext4 skips every inode deleted in the last minutes when it
# allocates one: after a few minutes of parts created and merged away, a 6-row INSERT into
# `ledger` (about 60 files) took 28-65 ms instead of 6 ms, and grew with each run
# (docs/benchmarks.md, session 16). A production server's disk has a journal. Without root
# or a loop device, the data stays under .stack, as before.
CH_DISK=/var/lib/tally-stack-disk
CH_DISK_IMAGE=/var/lib/tally-stack-disk.ext4
CH_DISK_SIZE=40G   # sparse: the image takes only what ClickHouse has written
# One inode per 8 KiB (5 million), twice ext4's default: a part of 18.16 is a few files a
# column, and merged-away parts stay 8 minutes; the holds benchmark alone left 2.6 million.

# ch_disk_ready: true once $CH_DISK is a mounted journaled filesystem this user can write
# (mounting it if needed, one script at a time: two mounts of one ext4 would corrupt it).
ch_disk_ready() {
  if ! mountpoint -q "$CH_DISK"; then
    [[ $(id -u) == 0 ]] || return 1
    (flock -w 300 7 && ch_disk_mount) 7>"$CH_DISK_IMAGE.lock" || return 1
  fi
  [[ -w $CH_DISK ]]
}

# ch_disk_mount: makes the image if there is none and mounts it (under the lock).
ch_disk_mount() {
  mountpoint -q "$CH_DISK" && return 0
  if [[ ! -s $CH_DISK_IMAGE ]]; then
    # Made aside and renamed, so an image that exists is a whole filesystem.
    rm -f "$CH_DISK_IMAGE.new"
    truncate -s "$CH_DISK_SIZE" "$CH_DISK_IMAGE.new" &&
      mkfs.ext4 -q -F -L tally-stack -i 8192 "$CH_DISK_IMAGE.new" >>"$LOGS/install-disk.log" 2>&1 &&
      mv "$CH_DISK_IMAGE.new" "$CH_DISK_IMAGE" ||
      { rm -f "$CH_DISK_IMAGE.new"; return 1; }
  fi
  # Direct I/O: without it every write is cached twice (in the image's filesystem and in the
  # root's) and the loop device's kernel workers took a core under the holds benchmark.
  local device
  device=$(losetup -j "$CH_DISK_IMAGE" -n -O NAME | head -n 1)
  [[ -n $device ]] ||
    device=$(losetup --find --show --direct-io=on "$CH_DISK_IMAGE" 2>>"$LOGS/install-disk.log") ||
    return 1
  mkdir -p "$CH_DISK" && mount "$device" "$CH_DISK" >>"$LOGS/install-disk.log" 2>&1 ||
    { losetup -d "$device"; return 1; }
}

# clickhouse_data_dir DIR: prints where the server configured in DIR keeps its data and
# temporary files. The first call for DIR (a new checkout, or after stack-down.sh --clean)
# starts it empty; DIR/data-dir records the choice so a restart keeps the data.
clickhouse_data_dir() {
  local dir=$1 data
  if [[ -s $dir/data-dir ]]; then
    data=$(cat "$dir/data-dir")
    # After a reboot the disk is not mounted: mount it before a server writes beneath it.
    # The owner is written again, so a checkout that moved is not pruned from then on.
    if [[ $data == "$CH_DISK"/* ]]; then
      ch_disk_ready || die "cannot mount $CH_DISK_IMAGE"
      mkdir -p "$data" && echo "$dir" >"$data/owner"
    fi
    echo "$data"
    return 0
  fi
  mkdir -p "$dir"
  if [[ ${CH_DISK_OFF:-} != 1 ]] && ch_disk_ready; then
    ch_disk_prune
    data="$CH_DISK/$(printf '%s' "$dir" | sha1sum | cut -c1-12)-$(basename "$dir")"
    # The record first: a prune running beside this one keeps what it names.
    echo "$data" >"$dir/data-dir"
    rm -rf "$data"
    mkdir -p "$data"
    echo "$dir" >"$data/owner"
  else
    [[ ${CH_DISK_OFF:-} == 1 ]] ||
      log "WARNING: no journaled disk for ClickHouse (needs root and a loop device); data in $dir"
    data=$dir
    echo "$data" >"$dir/data-dir"
  fi
  echo "$data"
}

# ch_disk_prune: removes the data of servers whose checkout is gone (a deleted clone), so
# the shared disk does not fill up with them.
ch_disk_prune() {
  local owner dir
  for owner in "$CH_DISK"/*/owner; do
    [[ -s $owner ]] || continue
    dir=$(cat "$owner")
    [[ -s $dir/data-dir && $(cat "$dir/data-dir") == "${owner%/owner}" ]] && continue
    rm -rf "${owner%/owner}"
  done
}

# clickhouse_remove_data DIR: removes the data of the server configured in DIR.
clickhouse_remove_data() {
  local dir=$1
  [[ -s $dir/data-dir ]] && rm -rf "$(cat "$dir/data-dir")"
  rm -rf "$dir"
}

# clickhouse_config DIR LOG MARK_CACHE PORTS [EXTRA] [PROFILE]: writes DIR/config.xml and
# DIR/users.xml for a clickhouse-server 18.16 on $HOST with its data under DIR: logs LOG.log and
# LOG.err.log, PORTS its *_port elements, EXTRA more elements (TLS, query_log), PROFILE the
# default profile's settings; one user, `default`, without a password, from loopback only.
clickhouse_config() {
  local dir=$1 log=$2 mark_cache=$3 ports=$4 extra=${5:-}
  local profile=${6:-<max_memory_usage>10000000000</max_memory_usage>}
  local data
  data=$(clickhouse_data_dir "$dir")
  mkdir -p "$dir"/{user_files,format_schemas} "$data"/{data,tmp}
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>$log.log</log>
        <errorlog>$log.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>$HOST</listen_host>
    $ports
    $extra
    <path>$data/data/</path>
    <tmp_path>$data/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <format_schema_path>$dir/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>$mark_cache</mark_cache_size>
    <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
EOF
  cat >"$dir/users.xml" <<EOF
<?xml version="1.0"?>
<yandex>
    <profiles><default>$profile</default></profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas><default></default></quotas>
</yandex>
EOF
}
