#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine (run as root, or with sudo available).
# Installs: GDAL (libgdal-dev, gdal-bin), pkg-config, nginx (the tests' HTTP range
# server), the wasm32-wasip2 Rust target, the ONNX Runtime shared library from the
# `onnxruntime` PyPI wheel and rustac (the tests' STAC API server) into .deps/.
# Prints the environment to export at the end; `source scripts/env.sh` does that for you.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
# chromium renders report.html in the report test (headless); nginx serves COGs by
# HTTP range requests to the STAC test (started by the test itself, never as a service).
for pkg in libgdal-dev gdal-bin pkg-config chromium nginx; do
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
# The s2cloudless LightGBM model (CC BY-SA 4.0, so never committed) from the s2cloudless wheel;
# plugins/s2cloudless/build.rs embeds it into the component.
s2c_version=1.7.3
s2c_dir="$here/.deps/s2cloudless-$s2c_version"
s2c_model="$s2c_dir/s2cloudless/models/pixel_s2_cloud_detector_lightGBM_v0.1.txt"
if [ ! -f "$s2c_model" ]; then
  echo "setup: fetching the s2cloudless $s2c_version model from PyPI" >&2
  rm -rf "$s2c_dir.tmp"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --dest "$s2c_dir.tmp/wheel" "s2cloudless==$s2c_version"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
    "$(ls "$s2c_dir.tmp"/wheel/s2cloudless-*.whl)" "$s2c_dir.tmp"
  rm -rf "$s2c_dir.tmp/wheel"
  rm -rf "$s2c_dir" && mv "$s2c_dir.tmp" "$s2c_dir"
fi
# Python packages the tests compare against (scikit-learn's metrics), kept in .deps/python.
py_dir="$here/.deps/python"
if ! PYTHONPATH="$py_dir" python3 -c "import sklearn, numpy" 2>/dev/null; then
  echo "setup: installing numpy and scikit-learn into .deps/python" >&2
  rm -rf "$py_dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --target "$py_dir.tmp" "numpy>=1.26,<3" "scikit-learn>=1.4,<2"
  rm -rf "$py_dir" && mv "$py_dir.tmp" "$py_dir"
fi
# rustac's STAC API server (`rustac serve`, in-memory backend) for the STAC API test.
rustac_version=0.9.18
rustac_dir="$here/.deps/rustac-$rustac_version"
if ! PYTHONPATH="$rustac_dir" "$rustac_dir/bin/rustac" --version >/dev/null 2>&1; then
  echo "setup: installing rustac $rustac_version (its STAC API server) into $rustac_dir" >&2
  rm -rf "$rustac_dir.tmp"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
    --target "$rustac_dir.tmp" "rustac==$rustac_version"
  rm -rf "$rustac_dir" && mv "$rustac_dir.tmp" "$rustac_dir"
fi
echo "setup: ok" >&2
