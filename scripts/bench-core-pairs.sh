#!/usr/bin/env bash
# Events a second of the pure core, two builds side by side (issue 23): ROUNDS rounds, each
# running BASE_BIN then BIN (two `bench_core` binaries, each built by scripts/bench-core.sh
# or `cargo build --release -p tally-core --example bench_core` at its commit) on EVENTS
# calls; prints a line per run (round, build, events per CPU second, events a second by the
# wall clock, load average) and then the medians of each build and in how many rounds BIN
# was faster. Alternating rounds share whatever else the machine runs; CPU seconds leave
# out the time the loop was not scheduled, not the time it waits on memory.
#   BASE_BIN=/tmp/bench_core-base BIN=/tmp/bench_core-new ROUNDS=6 bash scripts/bench-core-pairs.sh
set -euo pipefail
: "${BIN:?BIN: the bench_core binary under test}"
: "${BASE_BIN:?BASE_BIN: the bench_core binary to compare with}"
ROUNDS="${ROUNDS:-6}"
EVENTS="${EVENTS:-2000000}"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for build in base new; do
    bin="$BASE_BIN"
    [ "$build" = new ] && bin="$BIN"
    line="$("$bin" "$EVENTS")"
    cpu="$(grep -o '^[0-9]* events per CPU second' <<<"$line" | grep -o '^[0-9]*' || echo 0)"
    wall="$(grep -o '[0-9]* events/s on one core' <<<"$line" | grep -o '^[0-9]*')"
    echo "$round $build $cpu $wall $(cut -d' ' -f1 /proc/loadavg)" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
def column(build, i):
    return [int(r[i]) for r in rows if r[1] == build]
for build in ("base", "new"):
    print(f"{build}: median {statistics.median(column(build, 2)):,.0f} events per CPU second, "
          f"{statistics.median(column(build, 3)):,.0f} events a second by the wall clock")
faster = sum(n > b for b, n in zip(column("base", 2), column("new", 2)))
print(f"new faster per CPU second in {faster} of {len(column('new', 2))} rounds")
PY
