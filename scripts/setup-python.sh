#!/usr/bin/env bash
# Idempotent set-up of the Python environment that `models/` (PyTorch training and
# ONNX export) needs, in <repo>/.deps/models-python. Needs only CPython 3.11 and pip
# (a fresh Debian 12 has both); nothing is installed system-wide.
#
# Use it as:  PYTHONPATH=.deps/models-python:models python3 -m sitsflow_models --help
#
# Why the explicit, pinned list installed with --no-deps: PyPI's Linux torch wheel is
# the CUDA build, and a plain `pip install torch` pulls ~3.5 GB of wheels (triton,
# cuSOLVER, cuda-bindings, …; 5.4 GB on disk). Its libtorch_cuda.so is linked against
# the CUDA runtime libraries, so `import torch` fails without them even on a CPU-only
# machine (the CPU-only build lives on download.pytorch.org, which we cannot reach).
# We therefore install exactly the wheels the dynamic linker needs to load torch
# (cudart, cuBLAS, cuFFT, cuFile, cuSPARSE, nvJitLink, NVRTC, CUPTI, cuDNN,
# cuSPARSELt, NCCL, NVSHMEM) and skip what only GPU code paths load lazily (triton,
# cuSOLVER, cuda-bindings, NVTX, CCCL). The versions are the ones torch 2.15.0
# declares (its Requires-Dist), so the set stays consistent; bump them together.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${SITSFLOW_MODELS_PYTHON:-$here/.deps/models-python}"
torch_version=2.15.0

packages=(
  "torch==$torch_version"
  # torch's pure-Python requirements (setuptools is only for building C++ extensions).
  "filelock==4.2.11" "typing-extensions==4.16.0" "sympy==1.14.0" "mpmath==1.3.0"
  "networkx==3.6.1" "jinja2==3.1.6" "markupsafe==3.0.4" "fsspec==2026.9.0"
  # CUDA libraries libtorch links against: needed to import torch, never used on CPU.
  "nvidia-cuda-runtime==13.2.86" "nvidia-cublas==13.4.1.3" "nvidia-cufft==12.2.0.57"
  "nvidia-cufile==1.17.1.22" "nvidia-cusparse==12.7.10.12" "nvidia-nvjitlink==13.5.37"
  "nvidia-cuda-nvrtc==13.2.86" "nvidia-cuda-cupti==13.2.86" "nvidia-cudnn-cu13==9.26.0.51"
  "nvidia-cusparselt-cu13==0.8.1" "nvidia-nccl-cu13==2.30.7" "nvidia-nvshmem-cu13==3.7.2"
  # ONNX export and checking, arrays, the demo GeoTIFF reader (GDAL writes float
  # rasters with the floating-point predictor, which tifffile decodes through imagecodecs).
  "numpy==2.4.6" "onnx==1.23.2" "protobuf==7.36.2" "ml-dtypes==0.6.0" "tifffile==2026.3.3" "imagecodecs==2026.3.6"
)

probe="import torch, numpy, onnx, tifffile, imagecodecs, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')"
if PYTHONPATH="$target" python3 -c "$probe" 2>/dev/null; then
  echo "setup-python: $target is up to date (torch $torch_version)" >&2
  exit 0
fi

echo "setup-python: installing torch $torch_version (CPU use), numpy, onnx, tifffile, imagecodecs into $target" >&2
rm -rf "$target.tmp"
# One pip call: with --target, a second call would skip top-level folders that already
# exist (nvidia/ is shared by several wheels) instead of merging into them.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
  --target "$target.tmp" "${packages[@]}"
PYTHONPATH="$target.tmp" python3 -c "$probe"
rm -rf "$target" && mv "$target.tmp" "$target"
echo "setup-python: ok ($(du -sh "$target" | cut -f1) in $target)" >&2
