#!/usr/bin/env bash
# The test command: starts the local stack (installing what is missing), then checks
# formatting and lints and runs every test, unit and integration, against the real stack.
# Prints how long each step and each test suite took, so growth is seen early.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p .stack/logs
TIMES="$ROOT/.stack/logs/test-times.txt"
: >"$TIMES"

# step NAME CMD...: runs CMD and records how long it took.
step() {
  local name=$1 start=$SECONDS rc=0
  shift
  "$@" || rc=$?
  echo "$(printf '%5d' $((SECONDS - start))) s  $name" >>"$TIMES"
  return "$rc"
}

summary() {
  echo "==== time per step and per test suite (seconds) ===="
  cat "$TIMES"
}
trap summary EXIT

step "stack-up (installs included)" bash scripts/stack-up.sh
step "stack-secure (TLS and SASL)" bash scripts/stack-secure.sh
step "stack-cluster (ZooKeeper, 4 ClickHouse servers)" bash scripts/stack-cluster.sh
step "cargo fmt --check" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
# Dependencies point down only: no two modules of the shell or of the core import each
# other, even around a loop.
step "module layers (no import cycle)" python3 scripts/check-layers.py src core/src
step "module layers self-test" python3 scripts/check-layers.py --self-test
step "build the tests" cargo test --workspace --all-targets --no-run
# Each suite's own time, from the line cargo's harness prints at its end.
LOG="$ROOT/.stack/logs/test-output.txt"
set +e
step "cargo test (all suites)" cargo test --workspace --all-targets 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
set -e
awk '/^ *Running /{suite = ($2 == "unittests") ? $3 : $2} /^ *Doc-tests /{suite = "doc-tests " $2}
     /^test result:/{for (i = 1; i <= NF; i++) if ($i == "in") t = $(i + 1);
       sub(/s$/, "", t); printf "%5d s    suite %s (%s passed, %s failed)\n", t + 0.5, suite, $4, $6}' \
  "$LOG" >>"$TIMES"
((status == 0)) || exit "$status"
# The whole API from its OpenAPI document: no 5xx, no answer outside the document.
step "api-fuzz (schemathesis)" bash scripts/api-fuzz.sh
# Every statement tally sends also runs on a current ClickHouse engine (chdb), and the check
# fails on a statement that does not.
step "current engine (chdb)" bash scripts/check-current-engine.sh
step "current engine self-test" bash scripts/check-current-engine.sh --self-test
