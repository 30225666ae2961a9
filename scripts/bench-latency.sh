#!/usr/bin/env bash
# Produce-to-ledger latency after a history (issue 22: "p99 from produce to ledger row at
# 10,000 events a second at most twice the flush interval, also after 1,000,000 events of
# history"), for two builds side by side in one run, each with its own database and consumer
# group on the same topics:
# 1. `tally migrate` creates the run's topics (6 partitions each: kafka.partitions) and each
#    build's schema; grants for ACCOUNTS accounts (scripts/bench-events.py --grants: admins,
#    a purchased pack and two promotional lots each) and HISTORY usage events over them,
#    spread over the 5 hours before now (all inside the 24 h dedup window), are sent with
#    their event times as broker timestamps; each build drains them (`tally run --drain`),
#    one after the other, and the time of each drain is printed;
# 2. per build in turn (FIRST goes first): a `tally run --drain` catches up on whatever the
#    other build produced since (its group then has consumed everything), `tally run`
#    (follow mode) starts with its status endpoint on 127.0.0.1:STATUS_PORT, /readyz is
#    polled until it answers 200 (partitions assigned and restored), then
#    scripts/bench-latency.py sends RATE usage events a second for DURATION seconds into the
#    shared usage topic, with ids of its own ("lat-NAME-..."), and polls the build's ledger;
#    the build is stopped with SIGTERM. The other build is stopped meanwhile; it applies
#    these events in its own catch-up drain, so the build that goes second has RATE *
#    DURATION more events of history: run twice with FIRST swapped.
# 3. a table per build: history drain, catch-up drain, p50/p95/p99/max, missing events, and
#    whether p99 <= 2 x the flush interval in effect (TALLY_PIPELINE__FLUSH_INTERVAL, else
#    pipeline.flush_interval of TALLY_CONFIG or config/tally.toml, else 1s).
# Variables: BIN (required) and BASE_BIN (optional) the two `tally` binaries, named NAME
# (main) and BASE_NAME (base); STACK_UP=0 uses the stack as it runs (else
# scripts/stack-up.sh first); BENCH_DB the databases' prefix (default tally_latency:
# tally_latency_main, tally_latency_base) and of the topics and groups; ACCOUNTS (10000),
# HISTORY (1000000; 0: the grants alone), RATE (10000), DURATION (30), FIRST (NAME or
# BASE_NAME; default NAME), STATUS_PORT (18501), READY_TIMEOUT (seconds, 300), WORK (where
# the event files and logs go; default a new folder under /tmp). Every process the script
# starts is stopped on exit. Also printed: what else used the CPU during each follow run
# (every 5 s) and tally's own metrics of it (apply delay, flushes by phase).
#   STACK_UP=0 BIN=/path/tally BASE_BIN=/path/tally-base BENCH_DB=lat13 bash scripts/bench-latency.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
: "${BIN:?BIN: the tally binary under test}"
BASE_BIN="${BASE_BIN:-}"
NAME="${NAME:-main}"
BASE_NAME="${BASE_NAME:-base}"
ACCOUNTS="${ACCOUNTS:-10000}"
HISTORY="${HISTORY:-1000000}"
RATE="${RATE:-10000}"
DURATION="${DURATION:-30}"
FIRST="${FIRST:-$NAME}"
STATUS_PORT="${STATUS_PORT:-18501}"
READY_TIMEOUT="${READY_TIMEOUT:-300}"
DB="${BENCH_DB:-tally_latency}"
[ "${STACK_UP:-1}" = 0 ] || bash scripts/stack-up.sh

die() { echo "bench-latency: $*" >&2; exit 1; }
ch() { curl -sf http://127.0.0.1:8123/ --data-binary "$1"; }
now() { date +%s.%N; }
# busy: load average and the processes using the CPU now (over half a second): what else ran.
busy() {
  echo "load:$(uptime | sed 's/.*load average://'); busiest now: $(top -b -n 2 -d 0.5 -w 200 |
    awk '/^top -/ { f++ } f == 2' | sed -n '8,11p' | awk '{ printf "%s %s%%, ", $12, $9 }')"
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ch "SELECT 1" >/dev/null || die "ClickHouse does not answer on 127.0.0.1:8123"
timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9092' 2>/dev/null || die "no broker on 127.0.0.1:9092"

# Every process started here, stopped on exit however the script ends. Long commands run in
# the background and are waited for, so that a signal reaches the trap at once.
pids=()
cleanup() {
  local pid left end=$((SECONDS + 40))
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do
      if ((SECONDS >= end)); then kill -KILL "$pid" 2>/dev/null || true; break; fi
      sleep 0.2
    done
  done
  left=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=$((left + 1)); done
  ((left == 0)) || echo "bench-latency: $left process(es) still running" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
forget() { local pid kept=(); for pid in "${pids[@]}"; do [ "$pid" = "$1" ] || kept+=("$pid"); done; pids=("${kept[@]}"); }
run_fg() {
  "$@" &
  local pid=$! rc=0
  pids+=("$pid")
  wait "$pid" || rc=$?
  forget "$pid"
  return "$rc"
}

names=("$NAME")
[ -z "$BASE_BIN" ] || names+=("$BASE_NAME")
case "$FIRST" in
  "$NAME") order=("${names[@]}") ;;
  "$BASE_NAME") [ -n "$BASE_BIN" ] || die "FIRST=$FIRST without BASE_BIN"; order=("$BASE_NAME" "$NAME") ;;
  *) die "FIRST must be $NAME or $BASE_NAME" ;;
esac
bin_of() { if [ "$1" = "$NAME" ]; then echo "$BIN"; else echo "$BASE_BIN"; fi; }
# as_build NAME: the env command that runs a command with NAME's database and group.
as_build() { echo "env TALLY_CLICKHOUSE__DATABASE=${DB}_$1 TALLY_KAFKA__GROUP_ID=$run-$1"; }

# The flush interval in effect and where it comes from.
flush="${TALLY_PIPELINE__FLUSH_INTERVAL:-}" flush_from="TALLY_PIPELINE__FLUSH_INTERVAL"
if [ -z "$flush" ]; then
  flush_from="${TALLY_CONFIG:-config/tally.toml}"
  flush=$(sed -n '/^\[pipeline\]/,/^\[/s/^flush_interval *= *"\([^"]*\)".*/\1/p' "$flush_from" 2>/dev/null || true)
  [ -n "$flush" ] || { flush=1s flush_from="the built-in default"; }
fi
flush_s=$(python3 -c "
import re, sys
m = re.fullmatch(r'([0-9.]+)\s*(ms|s|sec|min|m)?', sys.argv[1].strip())
if not m: sys.exit('cannot read the flush interval ' + sys.argv[1])
print(float(m[1]) * {'ms': 0.001, 'min': 60, 'm': 60}.get(m[2], 1))" "$flush")

run="$DB-$(date +%s)"
WORK="${WORK:-$(mktemp -d "/tmp/bench-latency.$run.XXXX")}"
mkdir -p "$WORK"
export TALLY_KAFKA__USAGE_TOPIC="$run.ai.usage" TALLY_KAFKA__COMMANDS_TOPIC="$run.credit.commands"
export TALLY_KAFKA__DLQ_TOPIC="$run.tally.dlq" TALLY_STATUS__LISTEN="" TALLY_PIPELINE__TICK_INTERVAL=0s
export TALLY_SMTP__HOST=127.0.0.1 TALLY_SMTP__PORT=1025
echo "== $run: usage topic $TALLY_KAFKA__USAGE_TOPIC, databases ${names[*]/#/${DB}_}, groups ${names[*]/#/$run-}"
echo "== flush interval $flush ($flush_from): target p99 <= $(awk -v f="$flush_s" 'BEGIN { print 2 * f }') s; logs in $WORK"
for name in "${names[@]}"; do echo "$name: $(bin_of "$name")"; done
uptime

for name in "${names[@]}"; do
  ch "DROP DATABASE IF EXISTS ${DB}_$name" >/dev/null
  run_fg $(as_build "$name") "$(bin_of "$name")" migrate >/dev/null 2>>"$WORK/migrate.log"
done
at="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
python3 scripts/bench-events.py --accounts "$ACCOUNTS" --grants --now "$at" >"$WORK/grants.jsonl"
# HISTORY=0: the grants alone (the figure without history, for comparison in the same run).
((HISTORY == 0)) || python3 scripts/bench-events.py --accounts "$ACCOUNTS" --calls "$HISTORY" --now "$at" >"$WORK/history.jsonl"
t0=$(now)
run_fg "$BIN" send --stamp-event-time "$WORK/grants.jsonl" >/dev/null 2>"$WORK/send.log"
((HISTORY == 0)) || run_fg "$BIN" send --stamp-event-time "$WORK/history.jsonl" >/dev/null 2>>"$WORK/send.log"
echo "== sent grants for $ACCOUNTS accounts and $HISTORY usage events of history in $(elapsed "$t0" "$(now)") s"

declare -A drain catchup result
echo "== history drained by each build (tally run --drain, start-up included)"
for name in "${names[@]}"; do
  t0=$(now)
  run_fg $(as_build "$name") "$(bin_of "$name")" run --drain >"$WORK/$name-drain.out" 2>"$WORK/$name-drain.log"
  drain[$name]=$(elapsed "$t0" "$(now)")
  rows=$(ch "SELECT count() FROM ${DB}_$name.ledger WHERE entry_type = 'usage'")
  echo "$name: ${drain[$name]} s, $(tail -n 1 "$WORK/$name-drain.out"); usage ledger rows $rows"
  [ "$rows" = "$HISTORY" ] || die "$name's ledger has $rows usage rows after the drain, not $HISTORY"
done

echo "== produce to ledger row at $RATE events/s for ${DURATION}s, each build alone, in the order ${order[*]}"
for name in "${order[@]}"; do
  bin=$(bin_of "$name")
  busy
  # Whatever the other build produced is history too: this build's group consumes it first.
  t0=$(now)
  run_fg $(as_build "$name") "$bin" run --drain >"$WORK/$name-catchup.out" 2>"$WORK/$name-catchup.log"
  catchup[$name]=$(elapsed "$t0" "$(now)")
  echo "$name: caught up in ${catchup[$name]} s ($(tail -n 1 "$WORK/$name-catchup.out"))"
  $(as_build "$name") TALLY_STATUS__LISTEN="127.0.0.1:$STATUS_PORT" "$bin" run >"$WORK/$name-run.log" 2>&1 &
  run_pid=$!
  pids+=("$run_pid")
  t0=$(now) end=$((SECONDS + READY_TIMEOUT))
  until curl -sf "http://127.0.0.1:$STATUS_PORT/readyz" >/dev/null 2>&1; do
    kill -0 "$run_pid" 2>/dev/null || { tail -n 20 "$WORK/$name-run.log" >&2; die "$name's tally run exited before it was ready"; }
    ((SECONDS < end)) || { tail -n 20 "$WORK/$name-run.log" >&2; die "$name's tally run not ready within ${READY_TIMEOUT}s"; }
    sleep 0.2
  done
  echo "$name: tally run ready (/readyz) after $(elapsed "$t0" "$(now)") s"
  # What the machine does meanwhile, every 5 s (a sample, not a synchronisation).
  (while :; do busy; sleep 5; done) >"$WORK/$name-busy.txt" 2>&1 &
  sampler=$!
  pids+=("$sampler")
  run_fg $(as_build "$name") python3 scripts/bench-latency.py --rate "$RATE" --seconds "$DURATION" \
    --accounts "$ACCOUNTS" --id-prefix "lat-$name" >"$WORK/$name-latency.txt"
  cat "$WORK/$name-latency.txt"
  kill -TERM "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  forget "$sampler"
  echo "$name: during the run (every 5 s):"
  sed 's/^/  /' "$WORK/$name-busy.txt"
  # tally's own view of the same seconds: apply delay (broker timestamp, here the producer's
  # clock, to application) and the flushes (count, mean duration by phase, records each).
  curl -sf "http://127.0.0.1:$STATUS_PORT/metrics" >"$WORK/$name-metrics.txt" || true
  python3 - "$WORK/$name-metrics.txt" "$name" <<'PY'
import re, sys
v = {}
for line in open(sys.argv[1]):
    m = re.match(r'(tally_(?:apply_delay_seconds|flush_duration_seconds|flush_batch_events)_(?:sum|count|bucket))(\{[^}]*\})? (\S+)', line)
    if m:
        v[m[1] + (m[2] or "")] = float(m[3])
def mean(name, labels=""):
    n = v.get(f"{name}_count{labels}", 0)
    return v.get(f"{name}_sum{labels}", 0) / n if n else float("nan")
d = "tally_apply_delay_seconds"
n = v.get(f"{d}_count", 0)
le1 = v.get(f'{d}_bucket{{le="1"}}', 0) / n if n else float("nan")
f = "tally_flush_duration_seconds"
flushes = v.get(f'{f}_count{{phase="total"}}', 0)
phases = ", ".join(f"{p} {mean(f, '{phase=' + chr(34) + p + chr(34) + '}') * 1000:.0f} ms"
                   for p in ("build", "encode", "write_outputs", "checkpoint", "total"))
print(f"{sys.argv[2]}: tally's metrics since its start: {n:.0f} records applied, apply delay mean "
      f"{mean(d):.3f} s ({le1:.1%} within 1 s); {flushes:.0f} flushes, mean {phases}; "
      f"{mean('tally_flush_batch_events'):.0f} records a flush")
PY
  kill -TERM "$run_pid"
  rc=0; wait "$run_pid" || rc=$?
  forget "$run_pid"
  echo "$name: tally run stopped (SIGTERM), exit status $rc"
  result[$name]=$(python3 - "$WORK/$name-latency.txt" "$flush_s" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
missing = re.search(r"missing (\d+)", text)[1]
line = next(l for l in text.splitlines() if l.startswith("produce -> ledger visible"))
p = dict(re.findall(r"(p50|p95|p99|max) ([0-9.na]+)s", line))
met = "yes" if float(p["p99"]) <= 2 * float(sys.argv[2]) and missing == "0" else "no"
print(f"{p['p50']} | {p['p95']} | {p['p99']} | {p['max']} | {missing} | {met}")
EOF
)
done

echo "== summary (flush interval $flush; target p99 <= 2 x flush interval, no event missing)"
echo "| build | history drain | catch-up drain | p50 | p95 | p99 | max | missing | met |"
echo "|---|---|---|---|---|---|---|---|---|"
for name in "${order[@]}"; do
  echo "| $name | ${drain[$name]} s | ${catchup[$name]} s | ${result[$name]} |"
done
