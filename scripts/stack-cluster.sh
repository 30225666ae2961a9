#!/usr/bin/env bash
# The local ClickHouse cluster, beside the plain stack (stack-up.sh) and on ports of its own,
# for the cluster tests (tests/cluster.rs) and the cluster benchmark:
#   - ZooKeeper (Debian's `zookeeper` package, run from its jars with Java, no systemd) on
#     127.0.0.1:12181, data in .stack/cluster/zookeeper/;
#   - four clickhouse-server 18.16 processes on loopback, data in .stack/cluster/NAME/, making
#     two clusters, so that both topologies are up at once and a test that kills a replica of
#     one never disturbs a test on the other:
#       tally_replicated: 1 shard x 2 replicas, servers r1 and r2;
#       tally_sharded:    2 shards x 1 replica, servers s1 (shard 1) and s2 (shard 2).
#     Server number i (r1 1, r2 2, s1 3, s2 4) listens on http 28100+i, native 28200+i and
#     interserver 28300+i. Each server knows its own cluster (`remote_servers`), its macros
#     (`{shard}`, `{replica}`), ZooKeeper, and its cluster's queue of ON CLUSTER DDL; each
#     logs the queries it receives (system.query_log), which scripts/check-current-engine.sh
#     replays on a current engine.
# Idempotent: what runs and answers is left alone, a server that is down (killed by a test)
# is started again on its data. Installs zookeeper and clickhouse-server when missing. Writes
# the addresses to .stack/cluster.env (KEY=VALUE).
#   bash scripts/stack-cluster.sh          start (or check) it and print the addresses
#   bash scripts/stack-cluster.sh --down   stop it (--down --clean also deletes its data)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mkdir -p "$LOGS"

BASE="$STACK/cluster"
ZK_PORT=12181
ZK_DIR="$BASE/zookeeper"
ENV_FILE="$STACK/cluster.env"
ZK_SESSION_MS=6000   # how soon ZooKeeper tells a killed replica's session is gone
# name:number:cluster:shard, in the clusters' shard order.
SERVERS=(r1:1:tally_replicated:1 r2:2:tally_replicated:1 s1:3:tally_sharded:1 s2:4:tally_sharded:2)

# Several callers (test.sh, each cluster test) may start it at once: one at a time. Every
# service is started with fd 9 closed (`9>&-`), so no daemon inherits the lock.
mkdir -p "$BASE"
exec 9>"$BASE/lock"
flock -w 600 9 || die "another stack-cluster.sh held the lock for 10 minutes"

if [[ ${1:-} == --down ]]; then
  for server in "${SERVERS[@]}"; do stop_recorded "cluster-${server%%:*}"; done
  stop_recorded cluster-zookeeper
  if [[ ${2:-} == --clean ]]; then
    for server in "${SERVERS[@]}"; do clickhouse_remove_data "$BASE/${server%%:*}"; done
    rm -rf "$BASE" "$ENV_FILE"
    log "removed the cluster's data"
  fi
  exit 0
fi
[[ -z ${1:-} ]] || die "unknown argument $1 (expected nothing or --down [--clean])"
stop_other_checkouts

# ---- installs ----------------------------------------------------------------------------
ZK_JAR=/usr/share/java/zookeeper.jar   # its manifest names the jars it needs
missing=()
[[ -f $ZK_JAR ]] || missing+=(zookeeper)
command -v java >/dev/null || missing+=(default-jre-headless)
command -v curl >/dev/null || missing+=(curl)
command -v flock >/dev/null || missing+=(util-linux)
[[ -x $CLICKHOUSE_SERVER ]] || missing+=(clickhouse-server)
if ((${#missing[@]})); then log "apt-get install ${missing[*]}"; apt_install "${missing[@]}"; fi

# ---- ZooKeeper -----------------------------------------------------------------------------
# `ruok` is off by default in 3.8 (four-letter words are whitelisted); `srvr` is enough: it
# answers only once the server serves.
zk_ok() {
  exec 3<>"/dev/tcp/$HOST/$ZK_PORT" && printf srvr >&3 && grep -q '^Mode: standalone' <&3
}
start_zookeeper() {
  mkdir -p "$ZK_DIR/data"
  cat >"$ZK_DIR/zoo.cfg" <<EOF
tickTime=1000
minSessionTimeout=2000
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
clientPortAddress=$HOST
maxClientCnxns=200
admin.enableServer=false
4lw.commands.whitelist=srvr
autopurge.purgeInterval=1
EOF
  cat >"$ZK_DIR/log4j.properties" <<'EOF'
log4j.rootLogger=WARN, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{1}: %m%n
EOF
  port_open "$ZK_PORT" && die "port $ZK_PORT is taken by another process"
  # The package's classpath (/etc/zookeeper/conf_example/environment), with our directory
  # in place of /etc/zookeeper/conf.
  start_bg cluster-zookeeper "$ZK_DIR" java -Xmx256m -Dzookeeper.log.dir="$ZK_DIR" \
    -Dlog4j.configuration="file:$ZK_DIR/log4j.properties" -cp "$ZK_DIR:$ZK_JAR" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_DIR/zoo.cfg" 9>&-
}
zk_ok >/dev/null 2>&1 || pid_alive cluster-zookeeper || start_zookeeper
wait_for cluster-zookeeper zk_ok

# ---- ClickHouse servers --------------------------------------------------------------------
http_port() { echo $((28100 + $1)); }
tcp_port() { echo $((28200 + $1)); }

# remote_servers XML of CLUSTER: its servers, grouped by shard, in shard order.
remote_servers() {
  local cluster=$1 shard="" entry name number c s out=""
  for entry in "${SERVERS[@]}"; do
    IFS=: read -r name number c s <<<"$entry"
    [[ $c == "$cluster" ]] || continue
    if [[ $s != "$shard" ]]; then
      [[ -n $shard ]] && out+="</shard>"
      out+="<shard><internal_replication>true</internal_replication>"
      shard=$s
    fi
    out+="<replica><host>$HOST</host><port>$(tcp_port "$number")</port></replica>"
  done
  echo "<remote_servers><$cluster>$out</shard></$cluster></remote_servers>"
}

start_server() {   # start_server NAME NUMBER CLUSTER SHARD
  local name=$1 number=$2 cluster=$3 shard=$4 dir="$BASE/$1"
  clickhouse_config "$dir" "$LOGS/cluster-$name" 134217728 \
    "<http_port>$(http_port "$number")</http_port><tcp_port>$(tcp_port "$number")</tcp_port>
    <interserver_http_port>$((28300 + number))</interserver_http_port>
    <interserver_http_host>$HOST</interserver_http_host>" \
    "$(remote_servers "$cluster")
    <zookeeper>
        <node><host>$HOST</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>$ZK_SESSION_MS</session_timeout_ms>
    </zookeeper>
    <macros><cluster>$cluster</cluster><shard>$shard</shard><replica>$name</replica></macros>
    <distributed_ddl><path>/clickhouse/$cluster/task_queue/ddl</path></distributed_ddl>
    <query_log><database>system</database><table>query_log</table><flush_interval_milliseconds>1000</flush_interval_milliseconds></query_log>" \
    "<max_memory_usage>10000000000</max_memory_usage><log_queries>1</log_queries>"
  port_open "$(http_port "$number")" && die "port $(http_port "$number") is taken by another process"
  start_bg "cluster-$name" "$dir" "$CLICKHOUSE_SERVER" --config-file="$dir/config.xml" 9>&-
}
ch_ok() { [[ $(curl -s "http://$HOST:$(http_port "$1")/ping") == Ok.* ]]; }
# Ready for the tests: it answers and its ZooKeeper session is up (a replicated table made
# right after a restart must not find ZooKeeper missing).
ch_ready() {
  ch_ok "$1" && [[ $(curl -s "http://$HOST:$(http_port "$1")/" --data-binary \
    "SELECT count() FROM system.zookeeper WHERE path = '/'") =~ ^[1-9] ]]
}

for entry in "${SERVERS[@]}"; do
  IFS=: read -r name number cluster shard <<<"$entry"
  ch_ok "$number" >/dev/null 2>&1 || pid_alive "cluster-$name" || start_server "$name" "$number" "$cluster" "$shard"
done
for entry in "${SERVERS[@]}"; do
  IFS=: read -r name number _ _ <<<"$entry"
  wait_for "cluster-$name" ch_ready "$number"
done

url() { echo "http://$HOST:$(http_port "$1")"; }
cat >"$ENV_FILE" <<EOF
CLUSTER_ZOOKEEPER=$HOST:$ZK_PORT
CLUSTER_REPLICATED=tally_replicated
CLUSTER_REPLICATED_R1=$(url 1)
CLUSTER_REPLICATED_R2=$(url 2)
CLUSTER_REPLICATED_R1_PID=$STACK/cluster-r1.pid
CLUSTER_REPLICATED_R2_PID=$STACK/cluster-r2.pid
CLUSTER_SHARDED=tally_sharded
CLUSTER_SHARDED_S1=$(url 3)
CLUSTER_SHARDED_S2=$(url 4)
EOF
log "cluster ready (settings in $ENV_FILE): ZooKeeper $HOST:$ZK_PORT"
log "  tally_replicated (1 shard x 2 replicas): $(url 1) $(url 2)"
log "  tally_sharded (2 shards x 1 replica): $(url 3) (shard 1), $(url 4) (shard 2)"
