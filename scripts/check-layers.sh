#!/usr/bin/env bash
# The host's layering, enforced: `cargo deny check bans` with deny.toml's `wrappers`
# (only sitsflow-raster may depend on GDAL, only sitsflow-sandbox on wasmtime, only
# sitsflow-infer on ort, only sitsflow-config on toml, only the sitsflow binary crate on
# clap). The crates' own arrows (which host crate may use which) are Cargo's: a crate
# cannot name one it does not depend on, and Cargo refuses a cycle.
# Installs cargo-deny (pinned, from crates.io) when it is missing; idempotent.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
deny_version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $deny_version"; then
  echo "check-layers: installing cargo-deny $deny_version (a few minutes, once per machine)" >&2
  cargo install --quiet --locked --version "=$deny_version" cargo-deny
fi
cargo deny --log-level error check bans
echo "check-layers: ok" >&2
