"""ONNX export: ONNX Runtime reproduces PyTorch, NaN handling and normalisation are
inside the graph, the batch dimension is dynamic."""

import tempfile
import unittest
from pathlib import Path

import numpy as np
import onnx
import torch

from sitsflow_models import export, nets

from . import synthetic

HAVE_ORT = synthetic.ensure_onnxruntime()


def small(arch, dates=9, bands=4, classes=5, seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mean, std = rng.uniform(100, 300, bands), rng.uniform(10, 50, bands)
    hp = {"tempcnn": {"filters": 8, "dense": 16}, "lstm": {"hidden": 12},
          "ltae": {"d_model": 32, "heads": 4, "d_k": 4}}[arch]
    classifier = nets.build(arch, bands, dates, classes, mean, std, hp,
                            positions=[float(7 * t + t % 3) for t in range(dates)])
    # Non-trivial batch-norm statistics, so eval mode is really exercised.
    with torch.no_grad():
        for m in classifier.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return classifier.eval(), mean, std


def raw_inputs(n, dates=9, bands=4, seed=1, missing=0.2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(50, 400, (n, dates, bands)).astype(np.float32)
    x[rng.random(x.shape) < missing] = np.nan
    return x


class Export(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = Path(self.dir.name)

    def tearDown(self):
        self.dir.cleanup()

    def test_graph_signature(self):
        classifier, _, _ = small("tempcnn")
        path = self.tmp / "m.onnx"
        export.export_onnx(classifier, 9, 4, path)
        model = onnx.load(str(path))
        self.assertEqual(model.opset_import[0].version, export.OPSET)
        (inp,), (out,) = model.graph.input, model.graph.output
        self.assertEqual(inp.name, "reflectance")
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        self.assertEqual(dims, ["N", 9, 4])
        self.assertEqual(out.name, "probabilities")
        self.assertEqual([d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim], ["N", 5])
        self.assertIn("IsNaN", {n.op_type for n in model.graph.node})

    @unittest.skipUnless(HAVE_ORT, "onnxruntime not found (run scripts/setup.sh for .deps/onnxruntime-1.31.1)")
    def test_onnxruntime_matches_pytorch_with_nans_for_any_batch_size(self):
        for arch in nets.ARCHS:
            with self.subTest(arch=arch):
                classifier, _, _ = small(arch)
                path = self.tmp / f"{arch}.onnx"
                export.export_onnx(classifier, 9, 4, path)
                for n in (1, 7, 300):
                    diff, _ = export.onnxruntime_max_abs_diff(path, classifier, raw_inputs(n, seed=n))
                    self.assertLess(diff, 1e-5, f"{arch}, batch {n}")


class InferenceForm(unittest.TestCase):
    def test_folded_tempcnn_computes_what_the_trained_one_does(self):
        for dates, kernel in ((9, 5), (12, 3), (4, 5)):
            with self.subTest(dates=dates, kernel=kernel):
                torch.manual_seed(dates)
                classifier = nets.build("tempcnn", 4, dates, 5, np.full(4, 200.0), np.full(4, 40.0),
                                        {"filters": 8, "dense": 16, "kernel": kernel})
                with torch.no_grad():
                    for m in classifier.modules():
                        if isinstance(m, torch.nn.BatchNorm1d):
                            m.running_mean.uniform_(-0.5, 0.5)
                            m.running_var.uniform_(0.5, 2.0)
                            m.weight.uniform_(0.5, 1.5)
                            m.bias.uniform_(-0.2, 0.2)
                classifier.eval()
                folded = nets.for_inference(classifier, dates)
                self.assertIsInstance(folded.net, nets.TempCNNForInference)
                x = torch.from_numpy(raw_inputs(50, dates=dates))
                with torch.no_grad():
                    torch.testing.assert_close(folded.forward(x), classifier.forward(x), rtol=0, atol=1e-5)

    def test_lstm_and_ltae_are_exported_as_they_are(self):
        for arch in ("lstm", "ltae"):
            classifier, _, _ = small(arch)
            self.assertIs(nets.for_inference(classifier, 9), classifier)


class MissingValues(unittest.TestCase):
    def test_nan_is_the_band_mean_and_all_nan_rows_still_give_probabilities(self):
        for arch in nets.ARCHS:
            with self.subTest(arch=arch):
                classifier, mean, _ = small(arch)
                x = raw_inputs(5)
                x[:, :, 0] = 150.0  # no date has every band missing (L-TAE would leave it out)
                filled = np.where(np.isnan(x), mean.astype(np.float32)[None, None, :], x).astype(np.float32)
                with torch.no_grad():
                    a = classifier.probabilities(torch.from_numpy(x))
                    b = classifier.probabilities(torch.from_numpy(filled))
                    empty = classifier.probabilities(torch.full((2, 9, 4), float("nan")))
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
                self.assertTrue(torch.isfinite(empty).all())
                torch.testing.assert_close(empty.sum(1), torch.ones(2))


    def test_ltae_gives_dates_with_every_band_missing_no_attention(self):
        classifier, _, _ = small("ltae")
        x = raw_inputs(6, missing=0.0)
        x[:, 2, :] = np.nan
        x[:, 5, :] = np.nan
        x[0, :, :] = np.nan  # no valid date at all: uniform attention, finite output
        with torch.no_grad():
            z = classifier.normalise(torch.from_numpy(x))
            missing = torch.isnan(torch.from_numpy(x)).all(-1)
            _, weights = classifier.net.attention(z, missing)
            filled = x.copy()
            filled[1:, 2, :] = 999.0  # whatever a missing date would hold: it is not read
            p = classifier.probabilities(torch.from_numpy(x))
            self.assertTrue(torch.isfinite(p).all())
        self.assertLess(float(weights[1:, :, [2, 5]].max()), 1e-12)
        torch.testing.assert_close(weights[0], torch.full_like(weights[0], 1 / 9))
        torch.testing.assert_close(weights.sum(-1), torch.ones(6, 4))


class Positions(unittest.TestCase):
    def test_days_since_the_first_date_or_indices(self):
        self.assertEqual(nets.day_positions(["2018-08-05", "2018-08-15", "2019-08-05"], 3), [0.0, 10.0, 365.0])
        self.assertEqual(nets.day_positions(["t000", "t001"], 2), [0.0, 1.0])
        self.assertEqual(nets.day_positions(None, 3), [0.0, 1.0, 2.0])

    def test_an_anchored_grid_reads_the_same_in_another_year(self):
        a = nets.day_positions([f"2018-{m:02d}-01" for m in (3, 4, 5)], 3)
        b = nets.day_positions([f"2017-{m:02d}-01" for m in (3, 4, 5)], 3)
        self.assertEqual(a, b)


class Checkpoint(unittest.TestCase):
    def test_model_pt_round_trip(self):
        classifier, mean, std = small("lstm")
        config = {"arch": "lstm", "bands": 4, "dates": 9, "classes": 5, "hyperparameters": {"hidden": 12},
                  "mean": mean.tolist(), "std": std.tolist()}
        with tempfile.TemporaryDirectory() as d:
            export.save_checkpoint(Path(d) / "model.pt", classifier, config)
            loaded, loaded_config = export.load_checkpoint(Path(d) / "model.pt")
        x = torch.from_numpy(raw_inputs(4))
        with torch.no_grad():
            torch.testing.assert_close(loaded.probabilities(x), classifier.probabilities(x), rtol=0, atol=0)
        self.assertEqual(loaded_config["arch"], "lstm")

    def test_ltae_checkpoint_keeps_its_positions(self):
        classifier, mean, std = small("ltae")
        config = {"arch": "ltae", "bands": 4, "dates": 9, "classes": 5,
                  "hyperparameters": {"d_model": 32, "heads": 4, "d_k": 4}, "mean": mean.tolist(),
                  "std": std.tolist(), "positions": classifier.net.positions.tolist()}
        with tempfile.TemporaryDirectory() as d:
            export.save_checkpoint(Path(d) / "model.pt", classifier, config)
            loaded, _ = export.load_checkpoint(Path(d) / "model.pt")
        torch.testing.assert_close(loaded.net.encoding, classifier.net.encoding, rtol=0, atol=0)
        x = torch.from_numpy(raw_inputs(4))
        with torch.no_grad():
            torch.testing.assert_close(loaded.probabilities(x), classifier.probabilities(x), rtol=0, atol=0)


if __name__ == "__main__":
    unittest.main()
