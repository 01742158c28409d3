"""Seeded, stratified pixel samples of one year of the demo data (`sitsflow demo-data`)
as training and test CSVs in the shared wide convention.

The demo's `series/YYYY-MM-DD.tif` hold the reflectance bands plus an `SCL` band;
pixels that SCL calls cloud shadow (3), cloud (8, 9) or cirrus (10) become missing
values, as the host's SCL mask makes them. Labels come from `truth/YYYY.tif` (0 = none)
and `classes.csv`. The image is cut into square blocks (16 × 16 px by default): each
block goes wholly to training or to test, and the block id is the `group` column, so
the training recipe's validation split is spatially grouped too.

    python -m sitsflow_models.demo_samples --demo data/demo --year 2018 \
        --train train.csv --test test.csv [--per-class 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .data import InputError, read_classes

#: SCL classes treated as missing: cloud shadow, cloud medium / high probability, thin cirrus.
SCL_MISSING = (3, 8, 9, 10)


def read_geotiff(path: Path) -> tuple[np.ndarray, list[str]]:
    """A GDAL-written GeoTIFF as `[bands, rows, cols]` and its band descriptions."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        data = page.asarray()
        meta = page.tags.get(42112)  # GDAL_METADATA: band descriptions live there
        if data.ndim == 2:
            data = data[None]
        names = [f"band{i + 1}" for i in range(data.shape[0])]
        if meta is not None:
            for item in ET.fromstring(meta.value).iter("Item"):
                if item.get("role") == "description" and item.get("sample") is not None:
                    names[int(item.get("sample"))] = (item.text or "").strip()
    return data, names


def year_dates(series: Path, year: int) -> list[tuple[str, Path]]:
    dated = []
    for f in sorted(series.glob(f"{year}-*.tif")):
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}\.tif", f.name):
            dated.append((f.stem, f))
    if not dated:
        raise InputError(f"{series}: no YYYY-MM-DD.tif of {year}")
    return dated


def draw(truth: np.ndarray, codes: list[int], per_class: int, block: int, test_fraction: float,
         rng: np.random.Generator) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
    """Pixel indices per class for training and test, and the block id of every pixel.
    Blocks are assigned to test with probability `test_fraction`; within each side, up
    to `per_class` pixels of each class are drawn without replacement."""
    rows, cols = truth.shape
    block_rows, block_cols = -(-rows // block), -(-cols // block)
    r, c = np.divmod(np.arange(rows * cols), cols)
    block_id = (r // block) * block_cols + c // block
    test_blocks = rng.random(block_rows * block_cols) < test_fraction
    is_test = test_blocks[block_id]
    flat = truth.ravel()
    train, test = {}, {}
    for code in codes:
        for side, where in ((train, ~is_test), (test, is_test)):
            candidates = np.flatnonzero((flat == code) & where)
            k = min(per_class, len(candidates))
            side[code] = np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates
    return train, test, block_id


def write_csv(path: Path, pixels: dict[int, np.ndarray], names: dict[int, str], cube: np.ndarray,
              bands: list[str], dates: list[str], block_id: np.ndarray, cols: int) -> int:
    """`cube` is `[T, B, rows*cols]`; writes label,id,group then BAND@DATE date-major."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "id", "group"] + [f"{b}@{d}" for d in dates for b in bands])
        for code in sorted(pixels):
            for p in pixels[code]:
                values = cube[:, :, p].reshape(-1)
                w.writerow([names[code], f"r{p // cols}c{p % cols}", int(block_id[p])]
                           + ["" if np.isnan(v) else f"{v:.7g}" for v in values])
                n += 1
    tmp.replace(path)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sitsflow_models.demo_samples", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", type=Path, required=True, help="the demo data folder (series/, truth/, classes.csv)")
    p.add_argument("--year", type=int, default=2018)
    p.add_argument("--train", type=Path, required=True, help="training CSV to write")
    p.add_argument("--test", type=Path, required=True, help="test CSV to write")
    p.add_argument("--per-class", type=int, default=300, help="pixels per class on each side (fewer if absent)")
    p.add_argument("--block", type=int, default=16, help="block size in pixels (the group)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="share of blocks that go to test")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import tifffile

        classes = read_classes(args.demo / "classes.csv")
        names = {c.code: c.name for c in classes if c.code != 0}
        truth = tifffile.imread(args.demo / "truth" / f"{args.year}.tif")
        if truth.ndim != 2:
            raise InputError(f"truth/{args.year}.tif: expected one band, got shape {truth.shape}")
        unknown = sorted(set(np.unique(truth).tolist()) - set(names) - {0})
        if unknown:
            raise InputError(f"truth/{args.year}.tif: codes {unknown} are not in classes.csv")
        dated = year_dates(args.demo / "series", args.year)
        rng = np.random.default_rng(args.seed)
        present = [c for c in sorted(names) if (truth == c).any()]
        train, test, block_id = draw(truth, present, args.per_class, args.block, args.test_fraction, rng)
        planes, bands = [], None
        for date, f in dated:
            data, names_here = read_geotiff(f)
            if data.shape[1:] != truth.shape:
                raise InputError(f"{f}: {data.shape[1:]} px, the truth is {truth.shape}")
            if "SCL" not in names_here:
                raise InputError(f"{f}: no `SCL` band (bands: {', '.join(names_here)})")
            scl = data[names_here.index("SCL")]
            keep = [i for i, b in enumerate(names_here) if b != "SCL"]
            here = [names_here[i] for i in keep]
            if bands is None:
                bands = here
            elif here != bands:
                raise InputError(f"{f}: bands {here} differ from the first date's {bands}")
            values = data[keep].reshape(len(keep), -1).astype(np.float32)
            values[:, np.isin(scl.ravel(), SCL_MISSING)] = np.nan
            planes.append(values)
        cube = np.stack(planes)  # [T, B, rows*cols]
        dates = [d for d, _ in dated]
        cols = truth.shape[1]
        n_train = write_csv(args.train, train, names, cube, bands, dates, block_id, cols)
        n_test = write_csv(args.test, test, names, cube, bands, dates, block_id, cols)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{names[c]} {len(train[c])}/{len(test[c])}" for c in present)
    print(f"{args.train}: {n_train} samples, {args.test}: {n_test} samples ({len(dates)} dates × {len(bands)} bands; "
          f"train/test per class: {counts})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
