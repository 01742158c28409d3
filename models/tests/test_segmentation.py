"""FG-UNet (seed 004): patches drawn on the fly by class, the polygon split, the loss that
ignores unlabelled pixels, tiled prediction, the ONNX export, and training under
torchrun with two CPU processes (DDP, gloo)."""

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from sitsflow_models import patches, segmentation
from sitsflow_models.data import ClassInfo

from . import synthetic

HAVE_ORT = synthetic.ensure_onnxruntime()
TINY = {"width": 4, "depth": 2, "pixel_width": 4}


def parcels(size=96, parcel=16, dates=3, bands=2, seed=0):
    """A scene of square parcels of three classes, each labelled only in its interior
    (sparse labels with unlabelled gaps), the polygon id per parcel."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint16)
    groups = np.zeros((size, size), np.uint32)
    image = np.zeros((dates * bands, size, size), np.float32)
    gid = 0
    for r in range(0, size, parcel):
        for c in range(0, size, parcel):
            gid += 1
            cls = 1 + (gid * 7) % 3
            profile = np.array([0.1 * cls + 0.05 * t + 0.02 * b for t in range(dates) for b in range(bands)])
            image[:, r:r + parcel, c:c + parcel] = profile[:, None, None]
            labels[r + 3:r + parcel - 3, c + 3:c + parcel - 3] = cls
            groups[r + 3:r + parcel - 3, c + 3:c + parcel - 3] = gid
    image += 0.02 * rng.standard_normal(image.shape).astype(np.float32)
    image[:, rng.random((size, size)) < 0.05] = np.nan
    return image, labels, groups


def write_dataset(path, split=None, **kw):
    image, labels, groups = parcels(**kw)
    bands = ["B04", "B08"]
    dates = [f"t{i:02d}" for i in range(image.shape[0] // len(bands))]
    patches.write(path, image, labels, groups, bands, dates,
                  [ClassInfo(1, "crop"), ClassInfo(2, "grass"), ClassInfo(3, "urban")], split=split)
    return patches.read(path)


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=synthetic.subprocess_env(), timeout=600)


class PatchesAndSplit(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.ds = write_dataset(Path(self.dir.name) / "ds")

    def tearDown(self):
        self.dir.cleanup()

    def test_polygons_fall_on_one_side_and_about_a_third_is_tested(self):
        train, test = patches.split_polygons(np.asarray(self.ds.labels), np.asarray(self.ds.groups), 0.34,
                                             np.random.default_rng(0))
        self.assertFalse(train & test)
        self.assertEqual(len(train | test), 36)
        self.assertAlmostEqual(len(test) / 36, 0.34, delta=0.06)

    def test_each_patch_centres_a_class_drawn_uniformly(self):
        targets = np.asarray(self.ds.labels).astype(np.int64) - 1
        # A rare class: one parcel of class 3 kept, so pixel-uniform draws would hardly see it.
        rare = np.flatnonzero(targets.reshape(-1) == 2)
        targets.reshape(-1)[rare[100:]] = -1
        by_class = [np.flatnonzero(targets.reshape(-1) == i) for i in range(3)]
        rng = np.random.default_rng(1)
        with_rare = 0
        for _ in range(600):
            x, y, _ = segmentation.draw_patch(rng, self.ds, targets, by_class, 16)
            self.assertEqual(x.shape, (6, 16, 16))
            self.assertEqual(y.shape, (16, 16))
            with_rare += bool((y == 2).any())
        # 100 of 3300 labelled pixels: drawn by pixel, ~3 % of the 16 px patches would
        # hold one; drawn by class, a third are centred on one.
        self.assertGreater(with_rare / 600, 0.28)

    def test_augmentation_moves_image_and_labels_together(self):
        # The label of a pixel is a function of its value: any rotation or flip that kept
        # them together keeps the function.
        image = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
        labels = (np.arange(64 * 64) % 3 + 1).reshape(64, 64).astype(np.uint16)
        d = tempfile.mkdtemp(dir=self.dir.name)
        patches.write(d, image, labels, np.ones_like(labels, dtype=np.uint32), ["B"], ["t"],
                      [ClassInfo(1, "a"), ClassInfo(2, "b"), ClassInfo(3, "c")])
        ds = patches.read(d)
        targets = np.asarray(ds.labels).astype(np.int64) - 1
        by_class = [np.flatnonzero(targets.reshape(-1) == i) for i in range(3)]
        rng = np.random.default_rng(2)
        for _ in range(20):
            x, y, _ = segmentation.draw_patch(rng, ds, targets, by_class, 16)
            np.testing.assert_array_equal(x[0].astype(np.int64) % 3, y)

    def test_the_loss_ignores_unlabelled_pixels(self):
        net = segmentation.build(6, 3, np.zeros(6), np.ones(6), TINY)
        loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=-1)
        x = torch.randn(2, 6, 16, 16)
        y = torch.full((2, 16, 16), -1, dtype=torch.int64)
        y[0, 4, 4] = 1
        logits = net(x)
        a = loss_fn(logits, y).detach()
        y2 = y.clone()
        y2[1] = -1
        self.assertAlmostEqual(float(a), float(loss_fn(logits, y2).detach()), places=6)
        only = torch.nn.functional.cross_entropy(logits[0:1, :, 4, 4], torch.tensor([1])).detach()
        self.assertAlmostEqual(float(a), float(only), places=5)


class Statistics(unittest.TestCase):
    def test_channel_statistics_by_blocks_equal_the_whole_cube(self):
        image, _, _ = parcels(size=32, dates=5, bands=4)
        mean, std = segmentation.channel_statistics(image, np.random.default_rng(0), channels_at_once=3)
        np.testing.assert_allclose(mean, np.nanmean(image.astype(np.float64), axis=(1, 2)), rtol=1e-6)
        np.testing.assert_allclose(std, np.nanstd(image.astype(np.float64), axis=(1, 2)), rtol=1e-6)
        image[2] = np.nan
        with self.assertRaisesRegex(Exception, "channel 2 has no valid value"):
            segmentation.channel_statistics(image, np.random.default_rng(0), channels_at_once=3)

    def test_band_statistics_pool_every_date_of_a_band(self):
        image, _, _ = parcels(size=32, dates=5, bands=4)
        channels = [f"B{b}@t{d:02d}" for d in range(5) for b in range(4)]
        mean, std = segmentation.channel_statistics(image, np.random.default_rng(0))
        pooled_mean, pooled_std = segmentation.pool_by_band(mean, std, channels)
        for b in range(4):
            values = image[b::4].astype(np.float64)  # every date of band b: the same pixel count each
            np.testing.assert_allclose(pooled_mean[b::4], np.nanmean(values), rtol=1e-5)
            np.testing.assert_allclose(pooled_std[b::4], np.nanstd(values), rtol=1e-4)
        with self.assertRaisesRegex(Exception, "channel names"):
            segmentation.pool_by_band(mean, std, channels[:-1])


class TiledPrediction(unittest.TestCase):
    def test_tiles_agree_with_the_whole_scene_away_from_the_seams(self):
        torch.manual_seed(0)
        image, _, _ = parcels(size=96)
        net = segmentation.build(image.shape[0], 3, np.nanmean(image, axis=(1, 2)),
                                 np.nanstd(image, axis=(1, 2)), TINY).eval()
        whole = segmentation.predict_scene(net, image, tile=160, overlap=16)
        tiled = segmentation.predict_scene(net, image, tile=64, overlap=16)  # cores of 32 px
        self.assertEqual(whole.shape, (3, 96, 96))
        np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
        # Batch norm in eval mode and convolutions: a pixel whose receptive field stays
        # inside its tile gets the same probabilities as in the whole scene.
        diff = np.abs(whole - tiled).max(0)
        self.assertLess(float(np.median(diff)), 1e-3)

    def test_a_scene_smaller_than_a_tile_uses_a_smaller_tile(self):
        self.assertEqual(segmentation.effective_tile(512, 16, 64, 64, 4), 96)
        self.assertEqual(segmentation.effective_tile(512, 16, 2048, 900, 4), 512)


@unittest.skipUnless(HAVE_ORT, "onnxruntime not importable (scripts/setup.sh unpacks it into .deps/)")
class Export(unittest.TestCase):
    def test_onnx_runtime_matches_pytorch_on_any_batch_and_size(self):
        torch.manual_seed(0)
        net = segmentation.build(6, 3, np.full(6, 0.3), np.full(6, 0.1), TINY).eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            segmentation.export_onnx(net, 6, path, 17, "reflectance", "probabilities")
            rng = np.random.default_rng(0)
            for shape in [(1, 6, 32, 32), (3, 6, 64, 96)]:
                x = rng.uniform(0, 0.6, shape).astype(np.float32)
                x[rng.random(shape) < 0.1] = np.nan
                diff, _ = segmentation.onnxruntime_max_abs_diff(path, net, x)
                self.assertLess(diff, 1e-5, shape)


class CommandLine(unittest.TestCase):
    """`train --arch fg-unet --patches`, `predict --patches`, and training under torchrun."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.ds = Path(cls.dir.name) / "ds"
        write_dataset(cls.ds)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def train(self, out, *launcher):
        return run(*launcher, "-m", "sitsflow_models", "train", "--contract", 1, "--patches", self.ds,
                   "--arch", "fg-unet", "--out", out, "--epochs", 3, "--batch-size", 4, "--patches-per-epoch", 16,
                   "--patch", 32, "--tile", 64, "--hyperparameters", json.dumps(TINY))

    def test_train_writes_the_contract_files_and_predict_reproduces_the_scene(self):
        out = Path(self.dir.name) / "single"
        result = self.train(out)
        self.assertEqual(result.returncode, 0, result.stderr)
        sidecar = json.loads((out / "model.json").read_text())
        self.assertEqual(sidecar["input"]["layout"], "N×C×H×W")
        self.assertEqual(sidecar["tiling"], {"tile": 64, "overlap": 16, "blend": "centre crop"})
        self.assertEqual(sidecar["training"]["processes"], 1)
        self.assertEqual(sidecar["metrics"]["evaluated_on"], "test")
        self.assertIsNotNone(sidecar["metrics"]["miou"])
        if HAVE_ORT:
            self.assertLess(sidecar["onnx_check"]["max_abs_diff"], 1e-4)
        probs = out / "probs.npy"
        result = run("-m", "sitsflow_models", "predict", "--model", out / "model.onnx", "--patches", self.ds,
                     "--out", probs)
        self.assertEqual(result.returncode, 0, result.stderr)
        p = np.load(probs)
        self.assertEqual(p.shape, (3, 96, 96))
        np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)

    def test_samples_and_patches_are_not_mixed_up(self):
        result = run("-m", "sitsflow_models", "train", "--contract", 1, "--samples", self.ds / "dataset.json",
                     "--arch", "fg-unet", "--out", Path(self.dir.name) / "x")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--patches", json.loads(result.stdout.splitlines()[-1])["message"])

    def test_two_processes_train_under_torchrun(self):
        out = Path(self.dir.name) / "ddp"
        result = self.train(out, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        sidecar = json.loads((out / "model.json").read_text())
        self.assertEqual(sidecar["training"]["processes"], 2)
        self.assertTrue((out / "model.onnx").is_file())
        # Only rank 0 reports: one start event, one done event.
        events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        self.assertEqual([e["event"] for e in events].count("done"), 1)


if __name__ == "__main__":
    unittest.main()
