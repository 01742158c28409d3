"""The patch dataset a segmentation recipe trains on (`sitsflow-patches/1`).

A folder, written by the host (`host/recipes/src/segment.rs`) or by hand, in formats both
sides read with maintained libraries (NumPy's `.npy`, which the host writes with
`ndarray-npy`; JSON):

| file | content |
|---|---|
| `image.npy` | float32 `[C, H, W]`, C = dates × bands stacked date-major (`BAND@DATE` in `channels`), NaN = missing |
| `labels.npy` | uint16 `[H, W]` class codes, 0 = unlabelled (sparse reference) |
| `groups.npy` | uint32 `[H, W]` polygon (parcel) id of each labelled pixel, 0 = none |
| `dataset.json` | `contract`, `channels`, `bands`, `dates`, `classes` [{code, name}], `split` {`train`: [group ids], `test`: [group ids]}, `split_rule`, `source`, and `vhr` when there is a `vhr.npy` |
| `fine.npy` | optional (seed 000's super-resolution): uint16 `[A, H·s, W·s]`, annotations on the grid `s` times finer (`fine` = {`scale`: s, `dates`: one per annotation}), 0 = unlabelled |
| `vhr.npy` | optional (seed 003's fusion): float32 `[V, H·s, W·s]`, a very-high-resolution image of the same place on the scene's grid made `s` times finer (`vhr` = {`channels`, `scale`: s, `source`}), NaN = missing |

Patches are not stored: training draws them on the fly from the scene (seed 004), so a
dataset is one scene's cube (memory-mapped, never loaded whole) and its sparse labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import ClassInfo, InputError

CONTRACT = "sitsflow-patches/1"


@dataclass
class PatchDataset:
    path: Path
    #: `[C, H, W]` float32, memory-mapped.
    image: np.ndarray
    #: `[H, W]` class codes, 0 = unlabelled.
    labels: np.ndarray
    #: `[H, W]` polygon ids, 0 = none.
    groups: np.ndarray
    channels: list[str]
    bands: list[str]
    dates: list[str]
    classes: list[ClassInfo]
    #: Group ids of each side; None when the dataset records no split.
    train_groups: set[int] | None
    test_groups: set[int] | None
    split_rule: str | None
    #: `[V, H·s, W·s]` float32, memory-mapped: the very-high-resolution image, or None.
    vhr: np.ndarray | None = None
    vhr_channels: list[str] | None = None
    #: s: VHR pixels per scene pixel along each axis.
    vhr_scale: int = 1
    #: `[A, H·s, W·s]` uint16 annotations on a finer grid (seed 000), or None.
    fine: np.ndarray | None = None
    fine_dates: list[str] | None = None
    fine_scale: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape


def _load(path: Path, name: str, dtype, ndim: int) -> np.ndarray:
    f = path / name
    if not f.is_file():
        raise InputError(f"{f}: missing (a patch dataset has image.npy, labels.npy, groups.npy, dataset.json)")
    try:
        a = np.load(f, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise InputError(f"{f}: not a .npy array ({e})") from None
    if a.dtype != np.dtype(dtype) or a.ndim != ndim:
        raise InputError(f"{f}: {a.dtype} with {a.ndim} dimensions, expected {np.dtype(dtype)} with {ndim}")
    return a


def read(path: Path) -> PatchDataset:
    path = Path(path)
    meta_path = path / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing (is {path} a patch dataset?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{meta_path}:{e.lineno}:{e.colno}: {e.msg}") from None
    if meta.get("contract") != CONTRACT:
        raise InputError(f"{meta_path}: contract {meta.get('contract')!r} is not {CONTRACT!r}")
    image = _load(path, "image.npy", np.float32, 3)
    labels = _load(path, "labels.npy", np.uint16, 2)
    groups = _load(path, "groups.npy", np.uint32, 2)
    if image.shape[1:] != labels.shape or groups.shape != labels.shape:
        raise InputError(f"{path}: image {image.shape[1:]}, labels {labels.shape} and groups {groups.shape} "
                         f"are not the same height × width")
    channels, bands, dates = meta.get("channels", []), meta.get("bands", []), meta.get("dates", [])
    if len(channels) != image.shape[0] or len(bands) * len(dates) != len(channels):
        raise InputError(f"{meta_path}: {len(channels)} channels for {image.shape[0]} image planes "
                         f"({len(bands)} bands × {len(dates)} dates)")
    classes = [ClassInfo(int(c["code"]), str(c["name"])) for c in meta.get("classes", [])]
    codes = {c.code for c in classes}
    present = set(np.unique(labels).tolist()) - {0}
    if present - codes:
        raise InputError(f"{meta_path}: labels.npy has class codes {sorted(present - codes)} that `classes` "
                         f"does not list")
    split = meta.get("split")
    train_groups = set(map(int, split["train"])) if split else None
    test_groups = set(map(int, split["test"])) if split else None
    vhr, vhr_channels, vhr_scale = None, None, 1
    if meta.get("vhr") is not None:
        described = meta["vhr"]
        vhr_channels, vhr_scale = list(described.get("channels", [])), int(described.get("scale", 0))
        vhr = _load(path, "vhr.npy", np.float32, 3)
        want = (len(vhr_channels), labels.shape[0] * vhr_scale, labels.shape[1] * vhr_scale)
        if vhr_scale < 1 or vhr.shape != want:
            raise InputError(f"{path / 'vhr.npy'}: shape {vhr.shape}, expected {want} ({len(vhr_channels)} channels "
                             f"on the scene's {labels.shape[0]} × {labels.shape[1]} px grid made {vhr_scale} times finer)")
    elif (path / "vhr.npy").is_file():
        raise InputError(f"{meta_path}: there is a vhr.npy but no `vhr` entry describing its channels and scale")
    fine, fine_dates, fine_scale = None, None, 1
    if meta.get("fine") is not None:
        fine_dates, fine_scale = list(meta["fine"].get("dates", [])), int(meta["fine"].get("scale", 0))
        fine = _load(path, "fine.npy", np.uint16, 3)
        want = (len(fine_dates), labels.shape[0] * fine_scale, labels.shape[1] * fine_scale)
        if fine_scale < 1 or fine.shape != want:
            raise InputError(f"{path / 'fine.npy'}: shape {fine.shape}, expected {want} ({len(fine_dates)} dated "
                             f"annotations on the scene's grid made {fine_scale} times finer)")
        unknown = set(np.unique(fine).tolist()) - {0} - codes
        if unknown:
            raise InputError(f"{meta_path}: fine.npy has class codes {sorted(unknown)} that `classes` does not list")
    return PatchDataset(path=path, image=image, labels=labels, groups=groups, channels=channels, bands=bands,
                        dates=dates, classes=sorted(classes, key=lambda c: c.code), train_groups=train_groups,
                        test_groups=test_groups, split_rule=meta.get("split_rule"), vhr=vhr,
                        vhr_channels=vhr_channels, vhr_scale=vhr_scale, fine=fine, fine_dates=fine_dates,
                        fine_scale=fine_scale)


def write(path: Path, image: np.ndarray, labels: np.ndarray, groups: np.ndarray, bands: list[str],
          dates: list[str], classes: list[ClassInfo], split: dict | None = None, source: str = "",
          vhr: np.ndarray | None = None, vhr_channels: list[str] | None = None, fine: np.ndarray | None = None,
          fine_dates: list[str] | None = None) -> None:
    """Writes a dataset (tests, and datasets made outside the host); `dataset.json` last.
    `vhr` `[V, H·s, W·s]`: the very-high-resolution image on the grid `s` times finer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vhr_meta = None
    if vhr is not None:
        scale = vhr.shape[1] // labels.shape[0]
        np.save(path / "vhr.npy", np.ascontiguousarray(vhr, dtype=np.float32))
        vhr_meta = {"channels": vhr_channels or [f"vhr{i + 1}" for i in range(vhr.shape[0])], "scale": scale,
                    "source": source}
    np.save(path / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
    np.save(path / "labels.npy", np.ascontiguousarray(labels, dtype=np.uint16))
    np.save(path / "groups.npy", np.ascontiguousarray(groups, dtype=np.uint32))
    meta = {"contract": CONTRACT, "channels": [f"{b}@{d}" for d in dates for b in bands], "bands": bands,
            "dates": dates, "classes": [{"code": c.code, "name": c.name} for c in classes],
            "split": split, "split_rule": None if split is None else "given", "source": source, "vhr": vhr_meta,
            "fine": None}
    if fine is not None:
        np.save(path / "fine.npy", np.ascontiguousarray(fine, dtype=np.uint16))
        meta["fine"] = {"scale": fine.shape[1] // labels.shape[0], "dates": list(fine_dates or [])}
    (path / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def split_polygons(labels: np.ndarray, groups: np.ndarray, test_fraction: float,
                   rng: np.random.Generator) -> tuple[set[int], set[int]]:
    """Train / test polygons: per class (a polygon's class is its most frequent label),
    `test_fraction` of the polygons, at least one when a class has two or more."""
    mask = (labels > 0) & (groups > 0)
    by_class: dict[int, list[int]] = {}
    g, lab = groups[mask].astype(np.int64), labels[mask].astype(np.int64)
    for gid in np.unique(g):
        values, counts = np.unique(lab[g == gid], return_counts=True)
        by_class.setdefault(int(values[np.argmax(counts)]), []).append(int(gid))
    train, test = set(), set()
    for c in sorted(by_class):
        ids = sorted(by_class[c])
        k = 0 if len(ids) < 2 else min(len(ids) - 1, max(1, round(test_fraction * len(ids))))
        chosen = set(rng.choice(ids, size=k, replace=False).tolist()) if k else set()
        test |= chosen
        train |= set(ids) - chosen
    return train, test
