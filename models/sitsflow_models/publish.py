"""The tail every training command shares (`publish`): the PyTorch checkpoint, each ONNX
graph exported under a temporary name in the output folder, checked against PyTorch and
moved into place, `metrics.json`, and the sidecar `model.json` last — its presence means
the folder is complete, so a previous run's is removed first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .export import replace_atomically

#: A check's result: the largest |ONNX Runtime − PyTorch| and ONNX Runtime's version, or
#: None when onnxruntime is not importable (it is only a cross-check).
Check = tuple[float, str] | None

#: The error when a graph differs from PyTorch by more than its tolerance (`str.format`
#: fields: `diff`, `version`).
MISMATCH = "the ONNX export differs from PyTorch by {diff:.2e} (onnxruntime {version})"


@dataclass
class Graph:
    """One ONNX file to publish: `export(path)` writes it, `check(path)` compares the file
    at `path` with the PyTorch module (`export.ort_max_abs_diff` and its kin)."""

    #: File name in the output folder (`model.onnx`).
    name: str
    export: Callable[[Path], None]
    check: Callable[[Path], Check]
    #: What was checked, recorded in the sidecar's `onnx_check` after the difference
    #: (`{"rows": 512}`).
    checked: dict = field(default_factory=dict)
    tolerance: float = 1e-4
    mismatch: str = MISMATCH
    #: A description of its own, `(file name, document)`, written as soon as the graph is
    #: in place, its `onnx_check` filled in (`embeddings.json` beside `embeddings.onnx`).
    sidecar: tuple[str, dict] | None = None


def onnx_check(check: Check, checked: dict) -> dict | None:
    """A sidecar's `onnx_check`: None when onnxruntime was not there to check."""
    return None if check is None else {"onnxruntime": check[1], "max_abs_diff": check[0], **checked}


def publish(out: Path, *, checkpoint: Callable[[Path], None], graphs: list[Graph], metrics: dict, sidecar: dict,
            write_json: Callable[[Path, dict], None]) -> list[Check]:
    """Writes `out`: `model.pt` (`checkpoint(path)` saves it), each of `graphs` in order
    (the first is the model `sidecar` describes), `metrics.json`, then `model.json`: the
    `sidecar` with its `onnx_check` (the first graph's) filled in — in place where the
    document has the key, else at its end. Every file is written beside its final name
    and renamed, so readers never see a half-written one. Returns the checks."""
    out.mkdir(parents=True, exist_ok=True)
    # A previous run's sidecar would vouch for the files being replaced below.
    (out / "model.json").unlink(missing_ok=True)
    # The temporary name matters beyond atomicity: torch.save names the archive's root
    # folder after the file (`model.pt.tmp` → `model.pt/`), which is in model.pt's bytes.
    tmp = out / "model.pt.tmp"
    checkpoint(tmp)
    replace_atomically(tmp, out / "model.pt")
    checks = []
    for graph in graphs:
        tmp = out / (graph.name + ".tmp")
        graph.export(tmp)
        check = graph.check(tmp)
        if check is not None and check[0] > graph.tolerance:
            raise RuntimeError(graph.mismatch.format(diff=check[0], version=check[1]))
        replace_atomically(tmp, out / graph.name)
        if graph.sidecar is not None:
            name, document = graph.sidecar
            write_json(out / name, {**document, "onnx_check": onnx_check(check, graph.checked)})
        checks.append(check)
    write_json(out / "metrics.json", metrics)
    # The sidecar goes last: its presence means the directory is complete.
    write_json(out / "model.json", {**sidecar, "onnx_check": onnx_check(checks[0], graphs[0].checked)})
    return checks
