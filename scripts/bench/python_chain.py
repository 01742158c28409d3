"""What a careful user would write instead of sitsflow for one year of the seed-001 core chain
(issue #36's baseline): SCL mask dilated by 2 px, NDVI / NDWI / NDBI / BSI / EVI per date,
their mean / std / p10 / p50 / p90 over the year, 1,000 truth pixels per class, a 100-tree
random forest (`n_jobs=-1`), every pixel predicted, the map written as a tiled DEFLATE
GeoTIFF. rasterio + NumPy (sort-based percentiles: `np.nanpercentile` is ~20× slower
here) + SciPy + scikit-learn. Read by windows (with the dilation's halo), the features
kept in a memory-mapped file, so a scene larger than memory still runs.

    bash scripts/setup-bench.sh
    PYTHONPATH=.deps/bench-python python3 scripts/bench/python_chain.py \\
        target/bench/tile-year-1024/data-dn 2018 /tmp/python-map.tif

DATA is a `sitsflow demo-data --dn` folder (series/YYYY-MM-DD.tif with B02 … B12 as UInt16
DN plus scale/offset and SCL; truth/YEAR.tif). Prints one JSON line: seconds per phase,
CPU seconds, peak resident memory and the map's OA against the truth (training pixels
included). The same job for sitsflow: scripts/bench/user_chain.toml.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from scipy import ndimage
from sklearn.ensemble import RandomForestClassifier

#: SCL classes masked (sitsflow's scl-mask default): no data, saturated, cloud shadow,
#: cloud medium / high probability, thin cirrus.
MASKED_SCL = [0, 1, 3, 8, 9, 10]
DILATION = 2
BANDS = ["B02", "B03", "B04", "B08", "B11"]
INDICES = ["NDVI", "NDWI", "NDBI", "BSI", "EVI"]
STATS = ["mean", "std", "p10", "p50", "p90"]
PER_CLASS = 1000
WINDOW = 512


def nd(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a - b) / (a + b)


def indices(r: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        evi = 2.5 * (r["B08"] - r["B04"]) / (r["B08"] + 6 * r["B04"] - 7.5 * r["B02"] + 1)
    return np.stack([nd(r["B08"], r["B04"]), nd(r["B03"], r["B08"]), nd(r["B11"], r["B08"]),
                     nd(r["B11"] + r["B04"], r["B08"] + r["B02"]), evi])


def statistics(cube: np.ndarray) -> np.ndarray:
    """`[T, I, h, w]` with NaN → `[I × 5, h, w]`: mean, std and linear-interpolated
    percentiles over the valid dates, by one sort (NaN sorts last)."""
    valid = (~np.isnan(cube)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(valid > 0, np.nansum(cube, 0) / np.maximum(valid, 1), np.nan)
        std = np.sqrt(np.where(valid > 0, np.nansum((cube - mean) ** 2, 0) / np.maximum(valid, 1), np.nan))
    ordered = np.sort(cube, 0)
    out = [mean, std]
    for p in (0.1, 0.5, 0.9):
        position = p * (valid - 1).clip(0)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, (valid - 1).clip(0))
        frac = (position - low).astype(np.float32)
        lo = np.take_along_axis(ordered, low[None], 0)[0]
        hi = np.take_along_axis(ordered, high[None], 0)[0]
        out.append(np.where(valid > 0, lo + frac * (hi - lo), np.nan))
    # [5 stats, I, h, w] → [I × 5] ordered index-major (NDVI_mean, NDVI_std, …)
    return np.stack(out, 1).reshape(-1, *cube.shape[2:]).astype(np.float32)


def features_of(files: list[Path], window: Window, height: int, width: int) -> np.ndarray:
    """The window's features, reading a halo of DILATION px for the mask's dilation."""
    r0, c0 = max(window.row_off - DILATION, 0), max(window.col_off - DILATION, 0)
    r1 = min(window.row_off + window.height + DILATION, height)
    c1 = min(window.col_off + window.width + DILATION, width)
    read = Window(c0, r0, c1 - c0, r1 - r0)
    inner = (slice(window.row_off - r0, window.row_off - r0 + window.height),
             slice(window.col_off - c0, window.col_off - c0 + window.width))
    per_date = []
    for path in files:
        with rasterio.open(path) as ds:
            names = list(ds.descriptions)
            wanted = [names.index(b) + 1 for b in BANDS] + [names.index("SCL") + 1]
            dn = ds.read(wanted, window=read)
            scales, offsets = ds.scales, ds.offsets
        reflectance = {b: (dn[i].astype(np.float32) * scales[wanted[i] - 1] + offsets[wanted[i] - 1])
                       for i, b in enumerate(BANDS)}
        cloudy = ndimage.binary_dilation(np.isin(dn[-1], MASKED_SCL), structure=np.ones((3, 3), bool),
                                         iterations=DILATION)
        values = indices(reflectance)[:, inner[0], inner[1]]
        values[:, cloudy[inner]] = np.nan
        per_date.append(values)
    return statistics(np.stack(per_date))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    data, year, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    files = sorted((data / "series").glob(f"{year}-*.tif"))
    if not files:
        sys.exit(f"{data / 'series'}: no {year}-*.tif")
    with rasterio.open(files[0]) as ds:
        height, width, profile = ds.height, ds.width, ds.profile
    started, cpu0 = time.perf_counter(), time.process_time()
    n_features = len(INDICES) * len(STATS)
    with tempfile.TemporaryDirectory() as tmp:
        features = np.lib.format.open_memmap(Path(tmp) / "features.npy", mode="w+", dtype=np.float32,
                                             shape=(n_features, height, width))
        for row in range(0, height, WINDOW):
            for col in range(0, width, WINDOW):
                w = Window(col, row, min(WINDOW, width - col), min(WINDOW, height - row))
                features[:, row:row + w.height, col:col + w.width] = features_of(files, w, height, width)
        t_features = time.perf_counter()

        with rasterio.open(data / "truth" / f"{year}.tif") as ds:
            truth = ds.read(1)
        rng = np.random.default_rng(7)
        picked = []
        for c in np.unique(truth[truth > 0]):
            where = np.flatnonzero(truth.ravel() == c)
            picked.append(rng.choice(where, size=min(PER_CLASS, len(where)), replace=False))
        picked = np.sort(np.concatenate(picked))
        x = features.reshape(n_features, -1)[:, picked].T
        y = truth.ravel()[picked]
        x = np.where(np.isnan(x), 0.0, x)  # scikit-learn's forest wants finite values
        forest = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=7).fit(x, y)
        t_fit = time.perf_counter()

        labels = np.zeros((height, width), np.uint16)
        for row in range(0, height, WINDOW):
            rows = slice(row, min(row + WINDOW, height))
            block = features[:, rows].reshape(n_features, -1).T
            block = np.where(np.isnan(block), 0.0, block)
            labels[rows] = forest.predict(block).reshape(-1, width).astype(np.uint16)
        t_predict = time.perf_counter()

    profile.update(count=1, dtype="uint16", compress="deflate", tiled=True, blockxsize=256, blockysize=256,
                   nodata=0, scales=None, offsets=None)
    profile.pop("scales", None)
    profile.pop("offsets", None)
    with rasterio.open(out, "w", **profile) as ds:
        ds.write(labels, 1)
    ended = time.perf_counter()
    labelled = truth > 0
    print(json.dumps({
        "dates": len(files), "pixels": height * width,
        "seconds": {"features": round(t_features - started, 2), "fit": round(t_fit - t_features, 2),
                    "predict": round(t_predict - t_fit, 2), "write": round(ended - t_predict, 2),
                    "total": round(ended - started, 2)},
        "cpu_seconds": round(time.process_time() - cpu0, 2),
        "peak_rss_mib": round(peak_mib(), 1),
        "overall_accuracy": round(float((labels[labelled] == truth[labelled]).mean()), 4),
    }))


if __name__ == "__main__":
    main()
