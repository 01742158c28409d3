#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root, or with sudo available).
# Installs: GDAL (libgdal-dev, gdal-bin), pkg-config, the wasm32-wasip2 Rust target,
# and the ONNX Runtime shared library from the `onnxruntime` PyPI wheel into .deps/.
# Prints the environment to export at the end; `source scripts/env.sh` does that for you.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
for pkg in libgdal-dev gdal-bin pkg-config; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  echo "setup: adding the wasm32-wasip2 target" >&2
  rustup target add wasm32-wasip2
fi

ort_version=1.31.1
ort_dir="$here/.deps/onnxruntime-$ort_version"
if [ ! -f "$ort_dir/onnxruntime/capi/libonnxruntime.so.$ort_version" ]; then
  echo "setup: fetching ONNX Runtime $ort_version from PyPI" >&2
  rm -rf "$ort_dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$ort_dir.tmp" "onnxruntime==$ort_version"
  rm -rf "$ort_dir" && mv "$ort_dir.tmp" "$ort_dir"
fi
echo "setup: ok" >&2
