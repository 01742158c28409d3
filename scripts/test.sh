#!/usr/bin/env bash
# The test command (README, CI): set up the machine (idempotent), then run every test:
# the Rust workspace (the harness builds the plugin components for wasm32-wasip2 itself)
# and the Python training package in models/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
bash scripts/setup-python.sh
bash scripts/setup-scaleout.sh
# shellcheck source=env.sh
source scripts/env.sh
status=0
# failpoints: the fault tests (tests/faults.rs) kill runs at named points.
cargo test --workspace --locked --features sitsflow/failpoints --no-fail-fast "$@" || status=$?
echo "test.sh: models/ (python -m unittest)" >&2
(cd models && PYTHONPATH="$root/.deps/models-python:$root/.deps/onnxruntime-1.31.1:$root/models" \
  python3 -m unittest discover -s tests -t .) || status=$?
exit "$status"
