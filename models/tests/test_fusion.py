"""Seed 003's fusion: a patch dataset with a VHR image on a 4× finer grid, patches whose
VHR window moves with the series window, the fusion network (one encoder per modality,
late fusion with squeeze-and-excitation) trained beside the series-only one, and its
two-input ONNX export against PyTorch."""

import json
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from sitsflow_models import patches, segmentation
from sitsflow_models.data import ClassInfo, InputError

from . import synthetic
from .test_segmentation import HAVE_ORT, TINY, parcels, run

FUSION = {**TINY, "vhr_width": 4}


def vhr_of(labels, scale=4, seed=1):
    """A 3-channel VHR image whose texture tells class 2 from class 3 (stripes against
    flat), which the series below does not: each scene pixel's block holds its class."""
    rng = np.random.default_rng(seed)
    h, w = labels.shape
    cls = np.kron(labels.astype(np.float32), np.ones((scale, scale), np.float32))
    rows = np.arange(h * scale)[:, None] % 2
    stripes = np.where(cls == 2, rows, 0.5).astype(np.float32)
    v = np.stack([0.2 + 0.1 * stripes, 0.3 * np.ones_like(stripes), 0.1 + 0.05 * (cls > 0)]).astype(np.float32)
    return v + 0.01 * rng.standard_normal(v.shape).astype(np.float32)


def write_fusion_dataset(path, scale=4, size=64):
    image, labels, groups = parcels(size=size)
    # Classes 2 and 3 have the same series: only the VHR texture separates them.
    truth = labels.copy()
    full = np.kron(np.array([[1 + (1 + r * (size // 16) + c) * 7 % 3 for c in range(size // 16)]
                             for r in range(size // 16)]), np.ones((16, 16), np.int64))
    image[:, full == 3] = image[:, full == 2][:, :1] if (full == 2).any() else image[:, full == 3]
    patches.write(path, image, truth, groups, ["B04", "B08"], [f"t{i:02d}" for i in range(3)],
                  [ClassInfo(1, "crop"), ClassInfo(2, "grass"), ClassInfo(3, "urban")],
                  vhr=vhr_of(full.astype(np.uint16), scale), vhr_channels=["R", "G", "B"])
    return patches.read(path)


class Dataset(unittest.TestCase):
    def test_the_vhr_window_is_the_blocks_under_the_series_window_turned_alike(self):
        with tempfile.TemporaryDirectory() as d:
            labels = (np.arange(24 * 24).reshape(24, 24) % 3 + 1).astype(np.uint16)
            image = np.arange(24 * 24, dtype=np.float32).reshape(1, 24, 24)
            # Every VHR pixel carries the index of the scene pixel it lies in.
            vhr = np.kron(image[0], np.ones((4, 4), np.float32))[None]
            patches.write(d, image, labels, np.ones_like(labels, dtype=np.uint32), ["B"], ["t"],
                          [ClassInfo(1, "a"), ClassInfo(2, "b"), ClassInfo(3, "c")], vhr=vhr)
            ds = patches.read(d)
            self.assertEqual((ds.vhr_scale, ds.vhr.shape), (4, (1, 96, 96)))
            targets = np.asarray(ds.labels).astype(np.int64) - 1
            by_class = [np.flatnonzero(targets.reshape(-1) == i) for i in range(3)]
            rng = np.random.default_rng(5)
            for _ in range(30):
                x, y, v = segmentation.draw_patch(rng, ds, targets, by_class, 8, vhr=True)
                self.assertEqual(v.shape, (1, 32, 32))
                # Each block of the VHR patch is its scene pixel, whatever the symmetry.
                np.testing.assert_array_equal(v[0], np.kron(x[0], np.ones((4, 4), np.float32)))
            # Off the scene's edge the blocks mirror by whole scene pixels, as the host reads.
            w = segmentation._vhr_window(ds.vhr, -2, 22, 4, 4)
            want = segmentation._window(image, -2, 22, 4)
            np.testing.assert_array_equal(w[0], np.kron(want[0], np.ones((4, 4), np.float32)))

    def test_a_vhr_image_off_the_finer_grid_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            image, labels, groups = parcels(size=32)
            patches.write(d, image, labels, groups, ["B04", "B08"], ["a", "b", "c"],
                          [ClassInfo(1, "a"), ClassInfo(2, "b"), ClassInfo(3, "c")],
                          vhr=np.zeros((3, 128, 128), np.float32))
            np.save(Path(d) / "vhr.npy", np.zeros((3, 128, 120), np.float32))
            with self.assertRaisesRegex(InputError, r"vhr.npy: shape \(3, 128, 120\), expected \(3, 128, 128\)"):
                patches.read(d)


class Network(unittest.TestCase):
    def test_the_vhr_branch_lands_on_the_series_grid_and_the_gate_is_local(self):
        torch.manual_seed(0)
        vhr = segmentation.VhrInput(3, 4, [0.0] * 3, [1.0] * 3)
        net = segmentation.build(6, 3, np.zeros(6), np.ones(6), FUSION, vhr).eval()
        self.assertTrue(net.fusion)
        x, v = torch.randn(2, 6, 32, 32), torch.randn(2, 3, 128, 128)
        self.assertEqual(tuple(net(x, v).shape), (2, 3, 32, 32))
        # The squeeze averages a 15 px neighbourhood: a pixel's class does not depend on
        # what lies beyond the receptive field, so a larger tile around it changes nothing.
        big_x, big_v = torch.randn(1, 6, 96, 96), torch.randn(1, 3, 384, 384)
        big_x[:, :, 32:64, 32:64], big_v[:, :, 128:256, 128:256] = x[:1], v[:1]
        with torch.no_grad():
            inner = net(x[:1], v[:1])[0, :, 14:18, 14:18]
            outer = net(big_x, big_v)[0, :, 46:50, 46:50]
        self.assertLess(float((inner - outer).abs().max()), 1e-4)
        with self.assertRaisesRegex(ValueError, "power of two"):
            segmentation.build(6, 3, np.zeros(6), np.ones(6), FUSION, segmentation.VhrInput(3, 3, [0.0] * 3, [1.0] * 3))

    @unittest.skipUnless(HAVE_ORT, "onnxruntime not importable (scripts/setup.sh unpacks it into .deps/)")
    def test_onnx_runtime_matches_pytorch_with_two_inputs(self):
        torch.manual_seed(0)
        for fusion in ("se", "concat"):
            vhr = segmentation.VhrInput(4, 4, [0.1] * 4, [0.2] * 4)
            net = segmentation.build(6, 3, np.full(6, 0.3), np.full(6, 0.1), {**FUSION, "fusion": fusion}, vhr).eval()
            with torch.no_grad():
                for m in net.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.uniform_(-0.5, 0.5)
                        m.running_var.uniform_(0.5, 2.0)
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "m.onnx"
                segmentation.export_onnx(net, 6, path, 17, "reflectance", "probabilities")
                rng = np.random.default_rng(0)
                for n, side in [(1, 32), (2, 48)]:
                    x = rng.uniform(0, 0.6, (n, 6, side, side)).astype(np.float32)
                    x[rng.random(x.shape) < 0.1] = np.nan
                    v = rng.uniform(0, 0.6, (n, 4, 4 * side, 4 * side)).astype(np.float32)
                    v[rng.random(v.shape) < 0.05] = np.nan
                    diff, _ = segmentation.onnxruntime_max_abs_diff(path, net, x, v)
                    self.assertLess(diff, 1e-5, (fusion, n, side))


class Training(unittest.TestCase):
    def test_the_fusion_network_is_trained_beside_the_series_only_one_and_exported(self):
        with tempfile.TemporaryDirectory() as d:
            ds = Path(d) / "ds"
            write_fusion_dataset(ds)
            out = Path(d) / "model"
            result = run("-m", "sitsflow_models", "train", "--contract", 1, "--patches", ds, "--arch", "fg-unet",
                         "--out", out, "--epochs", 4, "--batch-size", 4, "--patches-per-epoch", 16, "--patch", 16,
                         "--tile", 64, "--overlap", 8, "--budgets", "0.5,1", "--hyperparameters", json.dumps(FUSION))
            self.assertEqual(result.returncode, 0, result.stderr)
            metrics = json.loads((out / "metrics.json").read_text())
            table = metrics["label_budgets"]
            self.assertEqual(table["inits"], ["supervised", "fusion"])
            self.assertEqual(table["vhr"]["scale"], 4)
            self.assertEqual([row["budget"] for row in table["table"]], [0.5, 1.0])
            for row in table["table"]:
                for init in ("supervised", "fusion"):
                    self.assertTrue(0 <= row[init]["overall_accuracy"] <= 1)
                    self.assertEqual(set(row[init]["iou"]), {"crop", "grass", "urban"})
            sidecar = json.loads((out / "model.json").read_text())
            self.assertEqual(sidecar["input"]["vhr"]["name"], "vhr")
            self.assertEqual(sidecar["input"]["vhr"]["channels"], ["R", "G", "B"])
            self.assertEqual(sidecar["hyperparameters"]["fusion"], "se")
            if HAVE_ORT:
                self.assertLess(sidecar["onnx_check"]["max_abs_diff"], 1e-4)
            probs = out / "probs.npy"
            result = run("-m", "sitsflow_models", "predict", "--model", out / "model.onnx", "--patches", ds,
                         "--out", probs)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(np.load(probs).shape, (3, 64, 64))


if __name__ == "__main__":
    unittest.main()
