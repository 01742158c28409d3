#!/usr/bin/env bash
# The test command (README, CI): set up the machine (idempotent), check the crates'
# layering (scripts/check-layers.sh: cargo deny check bans), then run every test: the
# Rust workspace (the harness builds the plugin components for wasm32-wasip2 itself) and
# the Python training package in models/.
#
#   bash scripts/test.sh          everything (CI runs this)
#   bash scripts/test.sh --fast   the inner loop: the layering, every crate's own tests and
#                                 the parser's config goldens (no components built, no
#                                 integration suite, no Python)
# Other arguments go to `cargo test` (e.g. `-- faults::` to filter).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
bash scripts/setup.sh
if [ "$fast" = 0 ]; then
  bash scripts/setup-python.sh
  bash scripts/setup-scaleout.sh
fi
# shellcheck source=env.sh
source scripts/env.sh
bash scripts/check-layers.sh
if [ "$fast" = 1 ]; then
  # Every crate's own tests (the config goldens the parser decides included), then the
  # sitsflow package's unit tests; its integration suite needs the built components.
  cargo test --workspace --locked --exclude sitsflow "$@"
  exec cargo test --locked -p sitsflow --lib --bins "$@"
fi
status=0
# failpoints: the fault tests (tests/faults.rs) stop runs at named points.
cargo test --workspace --locked --features sitsflow/failpoints --no-fail-fast "$@" || status=$?
echo "test.sh: models/ (python -m unittest)" >&2
(cd models && PYTHONPATH="$root/.deps/models-python:$root/.deps/onnxruntime-1.31.1:$root/models" \
  python3 -m unittest discover -s tests -t .) || status=$?
exit "$status"
