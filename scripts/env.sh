# Source me: exports the variables the host needs at run time.
_sitsflow_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ORT_DYLIB_PATH="$_sitsflow_root/.deps/onnxruntime-1.31.1/onnxruntime/capi/libonnxruntime.so.1.31.1"
export SITSFLOW_PYTHONPATH="$_sitsflow_root/.deps/python"
unset _sitsflow_root
