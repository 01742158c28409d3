"""SimCLR (seed 003): NT-Xent against the seed's formula written out, the views stream
contract, pretraining that lowers the loss and exports an encoder ONNX Runtime agrees
with, label budgets, and fine-tuning from the encoder beside the same network trained
from scratch."""

import io
import json
import math
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from sitsflow_models import segmentation, ssl
from sitsflow_models.data import InputError

from . import synthetic
from .test_segmentation import write_dataset

HAVE_ORT = synthetic.ensure_onnxruntime()
TINY = {"width": 4, "depth": 2}


def seed_formula(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """The slide's loss, term by term: ℓ(i,j) = −log exp(sim(z_i,z_j)/τ) /
    Σ_{k=1..2N} 1[k≠i] exp(sim(z_i,z_k)/τ), averaged over every ordered positive pair
    (i,j) and (j,i) of the 2N views."""
    z = [v for v in z1] + [v for v in z2]
    n = len(z1)

    def sim(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denominator = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(sim(z[i], z[j]) / tau) / denominator)
    return total / (2 * n)


def views(n_batches, batch, channels, patch, seed=0, epochs=1):
    """Pairs of noisy copies of a few base patterns: views of one patch share the pattern."""
    rng = np.random.default_rng(seed)
    bases = rng.random((6, channels, patch, patch)).astype(np.float32)
    out = []
    for e in range(epochs):
        for _ in range(n_batches):
            pick = rng.integers(0, len(bases), batch)
            first = bases[pick] + 0.05 * rng.standard_normal((batch, channels, patch, patch)).astype(np.float32)
            second = bases[pick] + 0.05 * rng.standard_normal((batch, channels, patch, patch)).astype(np.float32)
            second[:, :, :2, :2] = np.nan
            out.append((e, first, second))
    return out


def header(channels, patch, batches, batch, epochs=1):
    return ssl.ViewsHeader(channels=[f"B{c}@t00" for c in range(channels)], bands=[f"B{c}" for c in range(channels)],
                           dates=["t00"], patch=patch, epochs=epochs, batches_per_epoch=batches, batch_size=batch,
                           mean=[0.5] * channels, std=[0.3] * channels)


class NtXent(unittest.TestCase):
    def test_matches_the_seed_formula_written_out(self):
        rng = np.random.default_rng(3)
        for tau in (0.1, 0.7):
            for n in (2, 5):
                z1, z2 = rng.standard_normal((n, 7)), rng.standard_normal((n, 7))
                got = float(ssl.nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), tau))
                self.assertAlmostEqual(got, seed_formula(z1, z2, tau), places=9)

    def test_aligned_pairs_score_lower_than_shuffled_ones(self):
        z = torch.randn(8, 16)
        aligned = float(ssl.nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.1))
        shuffled = float(ssl.nt_xent(z, z[torch.randperm(8)] + 0.01 * torch.randn(8, 16), 0.1))
        self.assertLess(aligned, shuffled)


class ViewsStream(unittest.TestCase):
    def test_round_trip_and_truncation(self):
        batches = views(3, 4, 2, 8)
        buffer = io.BytesIO()
        ssl.write_views(buffer, header(2, 8, 3, 4), batches)
        buffer.seek(0)
        h, it = ssl.read_views(buffer)
        self.assertEqual((h.patch, h.batches_per_epoch, len(h.channels)), (8, 3, 2))
        got = list(it)
        self.assertEqual(len(got), 3)
        np.testing.assert_array_equal(got[1][1], batches[1][1])
        np.testing.assert_array_equal(np.isnan(got[2][2]), np.isnan(batches[2][2]))
        truncated = io.BytesIO(buffer.getvalue()[:-200])
        h, it = ssl.read_views(truncated)
        with self.assertRaisesRegex(InputError, "batch 2 has"):
            list(it)
        with self.assertRaisesRegex(InputError, "contract"):
            ssl.read_views(io.BytesIO(b'{"contract": "other/9"}\n'))


class Pretraining(unittest.TestCase):
    def test_the_loss_falls_and_the_onnx_encoder_agrees_with_pytorch(self):
        batches = views(6, 8, 3, 8, epochs=4)
        with tempfile.TemporaryDirectory() as tmp:
            stream = Path(tmp) / "views.bin"
            with open(stream, "wb") as f:
                ssl.write_views(f, header(3, 8, 6, 8, epochs=4), batches)
            out = Path(tmp) / "ssl"
            proc = subprocess.run([sys.executable, "-m", "sitsflow_models", "pretrain", "--contract", "1", "--arch",
                                   "simclr", "--views", str(stream), "--out", str(out), "--hyperparameters",
                                   json.dumps(TINY), "--learning-rate", "0.05", "--temperature", "0.5"],
                                  capture_output=True, text=True, env=synthetic.subprocess_env(), timeout=600)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            metrics = json.loads((out / "metrics.json").read_text())
            self.assertEqual(len(metrics["history"]), 4)
            self.assertLess(metrics["last_loss"], metrics["first_loss"])
            sidecar = json.loads((out / "model.json").read_text())
            self.assertEqual((sidecar["arch"], sidecar["kind"]), ("simclr", "encoder"))
            self.assertEqual(sidecar["output"]["shape"][1], 16)
            if HAVE_ORT:
                self.assertLess(sidecar["onnx_check"]["max_abs_diff"], 1e-4)
                config, state = ssl.load_encoder(out / "model.pt")
                encoder = ssl.Encoder(3, config["mean"], config["std"], 4, 2)
                encoder.load_state_dict(state)
                x = np.asarray(batches[-1][2][:4])
                self.assertLess(ssl.encoder_onnx_diff(out / "model.onnx", encoder, x)[0], 1e-4)
                embeddings = ssl.Embeddings(encoder)
                self.assertLess(ssl.encoder_onnx_diff(out / "embeddings.onnx", embeddings, x, "embeddings")[0], 1e-4)
                meta = json.loads((out / "embeddings.json").read_text())
                self.assertEqual(len(meta["output"]["channels"]), 4 + 16)
                with torch.no_grad():
                    self.assertEqual(tuple(embeddings(torch.from_numpy(x)).shape), (4, 20, 8, 8))


class FineTuning(unittest.TestCase):
    def test_budgets_keep_a_share_of_each_class_and_at_least_one_pixel(self):
        fit = np.full((20, 20), -1)
        fit[:10, :] = 0
        fit[10:12, :3] = 1
        kept = segmentation.keep_budget(fit, 2, 0.1, np.random.default_rng(0))
        self.assertEqual(int((kept == 0).sum()), 20)
        self.assertEqual(int((kept == 1).sum()), 1)
        self.assertTrue(np.all(fit[kept >= 0] == kept[kept >= 0]))
        with self.assertRaises(InputError):
            segmentation.keep_budget(fit, 2, 0.0, np.random.default_rng(0))

    def test_the_encoder_is_loaded_and_both_inits_are_tabled_per_budget(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            dataset = write_dataset(tmp / "patches")
            c = len(dataset.channels)
            encoder = ssl.Encoder(c, [0.2] * c, [0.1] * c, 4, 2)
            ssl.save_encoder(tmp / "encoder.pt", encoder, {"arch": "simclr", "channels": c, "hyperparameters":
                                                            {**segmentation.default_hyperparameters(), **TINY}})
            segmenter = segmentation.build(c, 3, [0.0] * c, [1.0] * c, {"width": 4, "depth": 2, "pixel_width": 4})
            segmentation.load_pretrained_encoder(segmenter, ssl.load_encoder(tmp / "encoder.pt"))
            for a, b in zip(segmenter.net.down.parameters(), encoder.down.parameters()):
                torch.testing.assert_close(a, b)
            torch.testing.assert_close(segmenter.normalise.mean, encoder.normalise.mean)
            wide = segmentation.build(c, 3, [0.0] * c, [1.0] * c, {"width": 8, "depth": 2})
            with self.assertRaisesRegex(InputError, "width 4"):
                segmentation.load_pretrained_encoder(wide, ssl.load_encoder(tmp / "encoder.pt"))
            out = tmp / "model"
            proc = subprocess.run([sys.executable, "-m", "sitsflow_models", "train", "--contract", "1", "--arch",
                                   "fg-unet", "--patches", str(tmp / "patches"), "--out", str(out), "--epochs", "2",
                                   "--patches-per-epoch", "16", "--batch-size", "8", "--patch", "32", "--tile", "64",
                                   "--overlap", "8", "--encoder", str(tmp / "encoder.pt"), "--budgets", "0.1,1",
                                   "--hyperparameters", json.dumps({"pixel_width": 4})],
                                  capture_output=True, text=True, env=synthetic.subprocess_env(), timeout=600)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            metrics = json.loads((out / "metrics.json").read_text())
            table = metrics["label_budgets"]["table"]
            self.assertEqual([row["budget"] for row in table], [0.1, 1.0])
            for row in table:
                for init in ("ssl", "supervised"):
                    self.assertGreaterEqual(row[init]["overall_accuracy"], 0)
                    self.assertEqual(set(row[init]["iou"]), {"crop", "grass", "urban"})
            self.assertLess(table[0]["fit_pixels"], table[1]["fit_pixels"])
            self.assertLess(table[0]["validation_pixels"], table[1]["validation_pixels"])
            sidecar = json.loads((out / "model.json").read_text())
            self.assertEqual(sidecar["hyperparameters"]["width"], 4)
            self.assertEqual(sidecar["training"]["pretrained_encoder"]["arch"], "simclr")


if __name__ == "__main__":
    unittest.main()
