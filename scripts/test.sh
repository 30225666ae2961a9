#!/usr/bin/env bash
# The test command: starts the local stack (installing what is missing), then checks
# formatting and lints and runs every test, unit and integration, against the real stack.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/stack-up.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
