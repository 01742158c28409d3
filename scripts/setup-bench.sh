#!/usr/bin/env bash
# Python packages the benchmarks' user-written baselines need (scripts/bench/python_chain.py:
# rasterio, SciPy, scikit-learn, NumPy), in .deps/bench-python. Idempotent; not needed by
# the tests or the demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.deps/bench-python"
if PYTHONPATH="$dir" python3 -c "import rasterio, scipy, sklearn, numpy" 2>/dev/null; then
  exit 0
fi
echo "setup-bench: installing rasterio, scipy, scikit-learn and numpy into .deps/bench-python" >&2
rm -rf "$dir.tmp"
python3 -m pip install --quiet --disable-pip-version-check --only-binary=:all: --target "$dir.tmp" \
  "rasterio==1.4.4" "scipy>=1.11,<2" "scikit-learn>=1.4,<2" "numpy>=1.26,<3"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
