#!/usr/bin/env bash
# The test command (README, CI): set up the machine (idempotent), then run every test.
# The test harness builds the plugin components for wasm32-wasip2 itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
# shellcheck source=env.sh
source scripts/env.sh
cargo test --workspace --locked --no-fail-fast "$@"
