"""ONNX export of a trained classifier, its PyTorch checkpoint (`model.pt`), and the
check of the export against PyTorch."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from . import nets

#: ONNX Runtime 1.31 supports opsets up to 23; 17 is old enough for any runtime the host
#: may be built against and has every operator these graphs use (LSTM, IsNaN, Where).
OPSET = 17
INPUT_NAME = "reflectance"
OUTPUT_NAME = "probabilities"


def export_onnx(classifier: nets.Classifier, dates: int, bands: int, path: Path) -> None:
    """Writes raw `[N, T, B]` → softmax `[N, C]` with a dynamic batch dimension, in the
    network's inference form (`nets.for_inference`); `onnxruntime_max_abs_diff` checks it
    against the classifier as trained."""
    module = nets.Probabilities(nets.for_inference(classifier, dates)).eval()
    example = torch.zeros(2, dates, bands)
    # The TorchScript-based exporter: deprecated since torch 2.9 in favour of the
    # torch.export one, but it needs no onnxscript dependency and maps nn.LSTM to the
    # fused ONNX LSTM operator (the torch.export path unrolls it over time).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # nn.LSTM's input-size checks are Python branches on shapes the batch axis never
        # changes; the tracer warns about them all the same.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # Also about LSTM and batch size: the exporter builds the zero initial state from
        # the input's batch dimension, and tests/test_export.py checks batches 1, 7 and 300.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                          do_constant_folding=True)
    import onnx

    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def onnxruntime_max_abs_diff(path: Path, classifier: nets.Classifier, cube: np.ndarray) -> tuple[float, str] | None:
    """Largest |ONNX Runtime − PyTorch| probability on `cube`, with ORT's version; None when
    the onnxruntime package is not importable (it is only a cross-check)."""
    x = np.ascontiguousarray(cube, dtype=np.float32)
    with torch.no_grad():
        want = classifier.eval().probabilities(torch.from_numpy(x)).numpy()
    return ort_max_abs_diff(path, x, want)


def ort_max_abs_diff(path: Path, x: np.ndarray, want: np.ndarray, output: str = OUTPUT_NAME,
                     extra: dict | None = None) -> tuple[float, str] | None:
    """Largest |ONNX Runtime(x) − want| of the graph at `path` on the CPU, with ORT's
    version (`extra`: the graph's other inputs by name); None when the onnxruntime package
    is not importable."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run([output], {INPUT_NAME: x, **(extra or {})})[0]
    return float(np.abs(got - want).max()), ort.__version__


def save_checkpoint(path: Path, classifier: nets.Classifier, config: dict) -> None:
    """`model.pt`: the state dict plus what `nets.build` needs to rebuild the module."""
    torch.save({"config": config, "state_dict": classifier.state_dict()}, str(path))


def load_checkpoint(path: Path) -> tuple[nets.Classifier, dict]:
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    classifier = nets.build(config["arch"], bands=config["bands"], dates=config["dates"], classes=config["classes"],
                            mean=config["mean"], std=config["std"], hyperparameters=config["hyperparameters"],
                            positions=config.get("positions"))
    classifier.load_state_dict(checkpoint["state_dict"])
    return classifier.eval(), config


def replace_atomically(tmp: Path, final: Path) -> None:
    """Readers never see a half-written output: write to `tmp`, fsync, rename."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
