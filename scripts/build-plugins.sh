#!/usr/bin/env bash
# Builds the host and every plugin component (wasm32-wasip2, cargo profile `plugin`),
# then installs the shipped plugins into plugins/dist as name@version.wasm.
# Idempotent: cargo rebuilds only what changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Plugins that ship (installed into plugins/dist) and test fixtures (built only).
shipped=(normalized-difference scl-mask s2cloudless spectral-mask indices onnx-classifier kmeans reliable-samples
         agreement-samples stratified-samples uncertainty-query random-forest markov simclr-augment)
fixtures=(fixture-spin fixture-alloc-bomb fixture-snoop fixture-trap-on-chunk fixture-slow-mean)

args=()
for p in "${shipped[@]}" "${fixtures[@]}"; do args+=(-p "$p"); done
cargo build --quiet --profile plugin --target wasm32-wasip2 "${args[@]}"
cargo build --quiet --release -p sitsflow

components=()
for p in "${shipped[@]}"; do components+=("target/wasm32-wasip2/plugin/${p//-/_}.wasm"); done
target/release/sitsflow --quiet plugins install --dir plugins/dist "${components[@]}"
