"""Labelled pixel time series in the shared wide-CSV convention, as `[N, T, B]` arrays.

The convention (``shared/data/README.md``, ``host/eval/src/samples.rs``): a header; ``label``
is the class name; optional ``id``, ``group`` (parcel id, for grouped splits), ``lon``,
``lat``; feature columns ``BAND@DATE`` (DATE ISO ``YYYY-MM-DD`` or a time index
``t000``); decimal values, empty = missing (NaN).
"""

from __future__ import annotations

import csv
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Columns that are not features.
META_COLUMNS = ("label", "id", "group", "lon", "lat")


class InputError(Exception):
    """Bad user input (file, column, value, class): reported without a traceback."""


@dataclass
class Samples:
    """Samples of one CSV file."""

    path: Path
    #: `[N, T, B]` float32, NaN = missing.
    cube: np.ndarray
    bands: list[str]
    dates: list[str]
    #: Class name per sample ("" = unlabelled).
    labels: list[str]
    ids: list[str] | None
    groups: list[str] | None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class ClassInfo:
    code: int
    name: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_samples(path: Path, require_label: bool = True, missing: str = "keep") -> Samples:
    """Reads a samples CSV into a `[N, T, B]` cube; errors name the file, line and column.

    `missing`: what an empty cell or `nan` is — ``"keep"``: NaN (the convention's
    missing value, e.g. a cloudy date); ``"error"``: an error naming the cell. An
    infinite value is always an error."""
    if missing not in ("keep", "error"):
        raise ValueError(f"missing={missing!r}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: empty file, expected a header") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise InputError(f"{path}: duplicate column(s) {', '.join(dup)}")
        if require_label and "label" not in header:
            raise InputError(f"{path}: missing column `label` (the class name)")
        features = [h for h in header if h not in META_COLUMNS]
        bands: list[str] = []
        dates: list[str] = []
        for name in features:
            if "@" not in name:
                raise InputError(f"{path}: column `{name}` is neither a known column "
                                 f"({', '.join(META_COLUMNS)}) nor a feature `BAND@DATE`")
            band, date = name.split("@", 1)
            if not band or not date:
                raise InputError(f"{path}: feature column `{name}` must be `BAND@DATE`")
            if band not in bands:
                bands.append(band)
            if date not in dates:
                dates.append(date)
        if not features:
            raise InputError(f"{path}: no feature column `BAND@DATE`")
        # Where each feature column lands in the [T, B] grid; every (band, date) must exist
        # once, since the networks need a full grid.
        position = {}
        for col, name in enumerate(header):
            if name in META_COLUMNS:
                continue
            band, date = name.split("@", 1)
            position[col] = dates.index(date) * len(bands) + bands.index(band)
        if len(features) != len(bands) * len(dates):
            present = set(features)
            missing = [f"{b}@{d}" for d in dates for b in bands if f"{b}@{d}" not in present]
            raise InputError(f"{path}: the features do not form a full band × date grid; "
                             f"missing column(s) {', '.join(missing[:5])}"
                             + (" …" if len(missing) > 5 else ""))
        feature_cols = np.array(sorted(position), dtype=np.int64)
        targets = np.array([position[c] for c in feature_cols], dtype=np.int64)
        col = {name: i for i, name in enumerate(header)}
        rows: list[np.ndarray] = []
        labels: list[str] = []
        ids: list[str] = []
        groups: list[str] = []
        for line, record in enumerate(reader, start=2):
            if not record or all(not v.strip() for v in record):
                continue
            if len(record) != len(header):
                raise InputError(f"{path}:{line}: {len(record)} fields, the header has {len(header)}")
            values = np.full(len(bands) * len(dates), np.nan, dtype=np.float32)
            for c, t in zip(feature_cols, targets):
                text = record[c].strip()
                if text:
                    try:
                        value = float(text)
                    except ValueError:
                        raise InputError(f"{path}:{line}:{c + 1}: column `{header[c]}`: `{text}` is not a number") from None
                    if math.isinf(value):
                        raise InputError(f"{path}:{line}:{c + 1}: column `{header[c]}`: `{text}` is infinite")
                    values[t] = value
                if missing == "error" and math.isnan(values[t]):
                    what = f"`{text}`" if text else "empty cell"
                    raise InputError(f"{path}:{line}:{c + 1}: column `{header[c]}`: {what}; if missing values are meant, "
                                     f"pass --missing keep")
            rows.append(values)
            labels.append(record[col["label"]].strip() if "label" in col else "")
            if "id" in col:
                ids.append(record[col["id"]].strip())
            if "group" in col:
                groups.append(record[col["group"]].strip())
    if not rows:
        raise InputError(f"{path}: no sample rows")
    cube = np.stack(rows).reshape(len(rows), len(dates), len(bands))
    return Samples(path=path, cube=cube, bands=bands, dates=dates, labels=labels,
                   ids=ids if "id" in col else None, groups=groups if "group" in col else None)


def read_classes(path: Path) -> list[ClassInfo]:
    """Reads a nomenclature `code,name,color` (color optional here)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [h.strip() for h in (reader.fieldnames or [])]
        for need in ("code", "name"):
            if need not in fields:
                raise InputError(f"{path}: missing column `{need}` (expected code,name,color)")
        classes = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            try:
                code = int(row["code"])
            except ValueError:
                raise InputError(f"{path}:{line}: code `{row['code']}` is not an integer") from None
            if not row["name"]:
                raise InputError(f"{path}:{line}: empty class name")
            classes.append(ClassInfo(code, row["name"]))
    codes = [c.code for c in classes]
    names = [c.name for c in classes]
    if len(set(codes)) != len(codes) or len(set(names)) != len(names):
        raise InputError(f"{path}: class codes and names must be unique")
    return classes


def names_for_codes(samples: Samples, nomenclature: list[ClassInfo] | None) -> None:
    """Labels that are integer codes become the nomenclature's class names, in place, so
    a samples CSV may give either (a code the nomenclature lacks stays as written and is
    reported as unknown). Without a nomenclature integer labels stay: they name themselves."""
    if nomenclature is None:
        return
    by_code = {str(c.code): c.name for c in nomenclature}
    samples.labels = [by_code.get(label, label) if label.isdigit() else label for label in samples.labels]


def model_classes(train: Samples, nomenclature: list[ClassInfo] | None) -> list[ClassInfo]:
    """The classes the model outputs, in output order (ascending code).

    With a nomenclature: its classes that have training samples (an output never
    trained on would only add noise to the softmax). Without: the training set's
    names, sorted, numbered 1..C. Code 0 means unlabelled and is never an output.
    """
    names = sorted({label for label in train.labels if label})
    if nomenclature is None:
        if names and all(n.isdigit() and int(n) > 0 for n in names):
            # Integer labels are class codes: kept, so the maps carry them.
            return sorted((ClassInfo(int(n), n) for n in names), key=lambda c: c.code)
        return [ClassInfo(i + 1, name) for i, name in enumerate(names)]
    by_name = {c.name: c for c in nomenclature}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(f"{train.path}: class(es) {', '.join(unknown)} not in the nomenclature "
                         f"({', '.join(by_name)})")
    return sorted((by_name[n] for n in names if by_name[n].code != 0), key=lambda c: c.code)


def encode_labels(samples: Samples, classes: list[ClassInfo], nomenclature: list[ClassInfo] | None) -> np.ndarray:
    """Class index per sample (0..C-1), or -1 for unlabelled samples (empty label or
    code 0), which the loss and the metrics ignore."""
    index = {c.name: i for i, c in enumerate(classes)}
    unlabelled = {c.name for c in nomenclature or [] if c.code == 0}
    known = {c.name for c in nomenclature} if nomenclature is not None else None
    out = np.empty(len(samples), dtype=np.int64)
    for i, label in enumerate(samples.labels):
        if not label or label in unlabelled:
            out[i] = -1
        elif label in index:
            out[i] = index[label]
        elif known is not None and label not in known:
            raise InputError(f"{samples.path}: row {i + 1}: unknown class `{label}` "
                             f"(not in the nomenclature)")
        else:
            raise InputError(f"{samples.path}: row {i + 1}: class `{label}` has no training sample, "
                             f"so the model cannot predict it")
    return out

