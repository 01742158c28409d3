#!/usr/bin/env bash
# Opt-in, idempotent: the GPU build of ONNX Runtime 1.31.1 (the `onnxruntime-gpu` PyPI wheel,
# built for CUDA 13) and the NVIDIA CUDA 13 / cuDNN 9 wheels its `cuda` and `cudnn` extras
# name, into .deps/onnxruntime-gpu-1.31.1/. scripts/setup.sh (the CPU build) is still needed
# for everything else.
#
# Size (PyPI, x86_64, checked for 1.31.1): onnxruntime-gpu 256 MB, nvidia-cudnn-cu13 517 MB,
# nvidia-cublas 444 MB, nvidia-cufft 165 MB, nvidia-curand 77 MB, nvidia-cuda-nvrtc 58 MB,
# nvidia-nvjitlink 47 MB, nvidia-cuda-runtime 3 MB: about 1.6 GB to download, several GB
# unpacked. Useful only with an NVIDIA driver recent enough for CUDA 13; the driver is not
# installed here. `sitsflow doctor` then says whether CUDA works and, if not, why.
#
# Prints the ORT_DYLIB_PATH and LD_LIBRARY_PATH to export at the end. (The host also preloads
# the CUDA libraries from this folder when ORT_DYLIB_PATH points into it, so LD_LIBRARY_PATH
# matters for other programs and for a non-standard layout.)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ort_version=1.31.1
dir="$here/.deps/onnxruntime-gpu-$ort_version"
lib="$dir/onnxruntime/capi/libonnxruntime.so.$ort_version"
pip=(python3 -m pip install --quiet --disable-pip-version-check)

# The folder is renamed into place only once complete, so its marker means "done".
if [ ! -f "$dir/.complete" ]; then
  echo "setup-gpu: fetching onnxruntime-gpu $ort_version and the NVIDIA CUDA/cuDNN wheels (about 1.6 GB)" >&2
  rm -rf "$dir.tmp"
  # The wheel alone: its Python dependencies (numpy, protobuf, …) are of no use to the host.
  "${pip[@]}" --no-deps --target "$dir.tmp" "onnxruntime-gpu==$ort_version"
  # The extras' requirements, read from the wheel itself so they follow its version.
  mapfile -t nvidia < <(python3 - "$dir.tmp" <<'EOF'
import pathlib, re, sys
meta = next(pathlib.Path(sys.argv[1]).glob("onnxruntime_gpu-*.dist-info/METADATA")).read_text()
for line in meta.splitlines():
    m = re.match(r'Requires-Dist: (.+?)\s*;\s*extra\s*==\s*"(cuda|cudnn)"', line)
    if m:
        print(m.group(1))
EOF
  )
  if [ ${#nvidia[@]} -eq 0 ]; then
    echo "setup-gpu: onnxruntime-gpu $ort_version names no cuda/cudnn extras; cannot tell which NVIDIA wheels it needs" >&2
    exit 1
  fi
  echo "setup-gpu: installing ${nvidia[*]}" >&2
  # With dependencies: cuDNN pulls cuBLAS, cuFFT pulls nvJitLink (all NVIDIA wheels).
  "${pip[@]}" --target "$dir.tmp/nvidia-wheels" "${nvidia[@]}"
  # One site folder: onnxruntime/ beside nvidia/, the layout onnxruntime's own preloading expects.
  cp -a "$dir.tmp/nvidia-wheels/." "$dir.tmp/"
  rm -rf "$dir.tmp/nvidia-wheels"
  if [ ! -f "$dir.tmp/onnxruntime/capi/libonnxruntime_providers_cuda.so" ]; then
    echo "setup-gpu: the wheel has no libonnxruntime_providers_cuda.so" >&2
    exit 1
  fi
  touch "$dir.tmp/.complete"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi

lib_dirs="$(find "$dir/nvidia" -mindepth 2 -maxdepth 3 -type d -name lib | sort | paste -sd: -)"
echo "setup-gpu: ok; export these (or add them to scripts/env.sh) to run models on CUDA:" >&2
echo "export ORT_DYLIB_PATH=\"$lib\""
echo "export LD_LIBRARY_PATH=\"$lib_dirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
