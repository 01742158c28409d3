"""demo_samples on a tiny series written like the host's demo generator writes it (GDAL
GeoTIFF: DEFLATE + floating-point predictor, band-separate, band names in GDAL_METADATA)."""

import csv
import tempfile
import unittest
from pathlib import Path

import numpy as np
import tifffile

from sitsflow_models import demo_samples
from sitsflow_models.data import read_samples

BANDS = ["B02", "B04", "B08", "SCL"]
SIZE = 32


def gdal_metadata(names):
    items = "".join(f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>' for i, n in enumerate(names))
    return f"<GDALMetadata>{items}</GDALMetadata>"


def write_scene(path, planes, names, dtype=np.float32):
    data = np.stack(planes).astype(dtype)
    tifffile.imwrite(path, data if len(planes) > 1 else data[0],
                     photometric="minisblack", planarconfig="separate" if len(planes) > 1 else None,
                     compression="zlib",
                     predictor=3 if dtype == np.float32 else None, tile=(16, 16),
                     extratags=[(42112, "s", 0, gdal_metadata(names), True)])


class DemoSamples(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.root = Path(self.dir.name)
        (self.root / "series").mkdir()
        (self.root / "truth").mkdir()
        (self.root / "classes.csv").write_text("code,name,color\n2,Grass,#00ff00\n9,Water,#0000ff\n4,Mineral,#aa00cc\n")
        truth = np.full((SIZE, SIZE), 2, dtype=np.uint16)
        truth[:, :8] = 9
        truth[0, 0] = 0  # unlabelled: never sampled
        write_scene(self.root / "truth" / "2018.tif", [truth], ["class"], dtype=np.uint16)
        rng = np.random.default_rng(0)
        self.cloud_date = "2018-02-10"
        for k, date in enumerate(["2018-01-05", self.cloud_date, "2018-03-07"]):
            reflectance = [np.where(truth == 9, 0.02, 0.2 + 0.01 * b) + 0.001 * rng.random(truth.shape)
                           for b in range(3)]
            scl = np.full(truth.shape, 4.0)
            if date == self.cloud_date:
                scl[:, : SIZE // 2] = 9.0  # left half cloudy, as Sen2Cor would say
            write_scene(self.root / "series" / f"{date}.tif", reflectance + [scl], BANDS)
        # Another year's scene must not be picked up.
        write_scene(self.root / "series" / "2019-01-05.tif", [np.zeros(truth.shape)] * 4, BANDS)

    def tearDown(self):
        self.dir.cleanup()

    def test_stratified_grouped_sample_with_scl_as_missing(self):
        train_csv, test_csv = self.root / "train.csv", self.root / "test.csv"
        code = demo_samples.main(["--demo", str(self.root), "--year", "2018", "--train", str(train_csv),
                                  "--test", str(test_csv), "--per-class", "20", "--block", "8", "--seed", "1"])
        self.assertEqual(code, 0)
        train, test = read_samples(train_csv), read_samples(test_csv)
        self.assertEqual(train.bands, ["B02", "B04", "B08"])
        self.assertEqual(train.dates, ["2018-01-05", self.cloud_date, "2018-03-07"])
        self.assertEqual(sorted(set(train.labels)), ["Grass", "Water"])
        self.assertEqual(train.labels.count("Grass"), 20)
        # Blocks go wholly to one side.
        self.assertFalse(set(train.groups) & set(test.groups))
        for samples in (train, test):
            for i, pixel in enumerate(samples.ids):
                row, col = map(int, pixel[1:].split("c"))
                self.assertNotEqual((row, col), (0, 0))
                cloudy = col < SIZE // 2
                self.assertEqual(bool(np.isnan(samples.cube[i, 1]).all()), cloudy, pixel)
                self.assertFalse(np.isnan(samples.cube[i, [0, 2]]).any())
                self.assertEqual(samples.groups[i], str((row // 8) * (SIZE // 8) + col // 8))
                # Values are the scene's: water is dark.
                self.assertEqual(samples.labels[i] == "Water", samples.cube[i, 0, 2] < 0.1)

    def test_same_seed_same_files(self):
        outputs = []
        for run in range(2):
            train_csv, test_csv = self.root / f"train{run}.csv", self.root / f"test{run}.csv"
            demo_samples.main(["--demo", str(self.root), "--train", str(train_csv), "--test", str(test_csv),
                               "--per-class", "10", "--block", "8"])
            outputs.append((train_csv.read_text(), test_csv.read_text()))
        self.assertEqual(outputs[0], outputs[1])
        with open(self.root / "train0.csv") as f:
            self.assertEqual(next(csv.reader(f))[:4], ["label", "id", "group", "B02@2018-01-05"])


if __name__ == "__main__":
    unittest.main()
