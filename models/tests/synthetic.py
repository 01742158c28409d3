"""Small synthetic labelled time series for the tests: each class has its own temporal
profile per band (a phase-shifted seasonal curve), plus noise and missing values."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ORT_DIR = REPO / ".deps" / "onnxruntime-1.31.1"


def ensure_onnxruntime() -> bool:
    """Puts the ONNX Runtime wheel unpacked by scripts/setup.sh on sys.path; False if absent."""
    if ORT_DIR.is_dir() and str(ORT_DIR) not in sys.path:
        sys.path.append(str(ORT_DIR))
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def subprocess_env() -> dict:
    """Environment for `python -m sitsflow_models` children: this interpreter's path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def make(n_per_class: int, dates: int = 10, bands: int = 3, classes: int = 3, seed: int = 0,
         missing: float = 0.1, noise: float = 0.08) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`[N, T, B]` reflectance-like values (NaN = missing), class index per sample, and a
    group per sample (4 samples per group, never mixing classes)."""
    rng = np.random.default_rng(seed)
    t = np.arange(dates) / dates
    cube, labels, groups = [], [], []
    for c in range(classes):
        phase = 2 * np.pi * c / classes
        profile = np.stack([0.3 + 0.1 * b + 0.15 * np.sin(2 * np.pi * t + phase + b) for b in range(bands)], axis=1)
        x = profile[None] + noise * rng.standard_normal((n_per_class, dates, bands))
        cube.append(x)
        labels += [c] * n_per_class
        groups += [f"c{c}g{i // 4}" for i in range(n_per_class)]
    cube = np.concatenate(cube).astype(np.float32)
    cube[rng.random(cube.shape) < missing] = np.nan
    return cube, np.array(labels, dtype=np.int64), groups


CLASS_NAMES = ["wheat", "forest", "water", "urban"]


def write_csv(path: Path, cube: np.ndarray, labels: np.ndarray, groups: list[str] | None = None,
              band_names: list[str] | None = None) -> None:
    n, dates, bands = cube.shape
    band_names = band_names or [f"B{b}" for b in range(bands)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "id"] + (["group"] if groups else []) +
                   [f"{band_names[b]}@t{d:03d}" for d in range(dates) for b in range(bands)])
        for i in range(n):
            values = ["" if np.isnan(v) else repr(float(v)) for v in cube[i].reshape(-1)]
            w.writerow([CLASS_NAMES[labels[i]], f"s{i}"] + ([groups[i]] if groups else []) + values)
