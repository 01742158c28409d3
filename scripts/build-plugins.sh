#!/usr/bin/env bash
# Builds the host and every plugin component (wasm32-wasip2, cargo profile `plugin`),
# then installs the shipped plugins into plugins/dist as name@version.wasm.
# Idempotent: cargo rebuilds only what changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# The package named by a folder's Cargo.toml.
package_of() { sed -n 's/^name = "\(.*\)"$/\1/p' "$1/Cargo.toml" | head -n 1; }
# Plugins that ship (installed into plugins/dist): every package under plugins/ but the
# SDK; test fixtures (built only): every package under tests/components/. The folders
# are the one list (the workspace's members are the same globs).
shipped=()
for d in plugins/*/; do
  [ -f "$d/Cargo.toml" ] || continue
  name="$(package_of "$d")"
  [ "$name" = sitsflow-sdk ] || shipped+=("$name")
done
fixtures=()
for d in tests/components/*/; do
  if [ -f "$d/Cargo.toml" ]; then fixtures+=("$(package_of "$d")"); fi
done

args=()
for p in "${shipped[@]}" "${fixtures[@]}"; do args+=(-p "$p"); done
cargo build --quiet --profile plugin --target wasm32-wasip2 "${args[@]}"
cargo build --quiet --release -p sitsflow

components=()
for p in "${shipped[@]}"; do components+=("target/wasm32-wasip2/plugin/${p//-/_}.wasm"); done
# This checkout's own build replaces what an earlier build installed (--force).
target/release/sitsflow --quiet plugins install --force --dir plugins/dist "${components[@]}"
