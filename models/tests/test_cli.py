"""The file contract end to end: `python -m sitsflow_models train / predict / bench` as
the host runs them (subprocesses, JSON lines on stdout, exit codes)."""

import csv
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np

from sitsflow_models import export

from . import synthetic

HAVE_ORT = synthetic.ensure_onnxruntime()


def run(*args):
    return subprocess.run([sys.executable, "-m", "sitsflow_models", *map(str, args)], capture_output=True, text=True,
                          env=synthetic.subprocess_env(), timeout=300)


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


class TrainPredictBench(unittest.TestCase):
    """One training run shared by the tests of its outputs."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        tmp = Path(cls.dir.name)
        cube, targets, groups = synthetic.make(24, dates=8, bands=2, seed=3)
        test_cube, test_targets, _ = synthetic.make(10, dates=8, bands=2, seed=4)
        cls.train_csv, cls.test_csv = tmp / "train.csv", tmp / "test.csv"
        synthetic.write_csv(cls.train_csv, cube, targets, groups, band_names=["NIR", "R"])
        synthetic.write_csv(cls.test_csv, test_cube, test_targets, band_names=["NIR", "R"])
        cls.classes_csv = tmp / "classes.csv"
        cls.classes_csv.write_text("code,name,color\n4,wheat,#ffff00\n11,forest,#008000\n12,water,#0000ff\n"
                                   "13,urban,#ff0000\n")
        cls.out = tmp / "model"
        cls.result = run("train", "--contract", 1, "--samples", cls.train_csv, "--test", cls.test_csv,
                         "--classes", cls.classes_csv, "--arch", "tempcnn", "--out", cls.out, "--epochs", 6,
                         "--batch-size", 16, "--hyperparameters", '{"filters": 8, "dense": 16}', "--missing", "keep")

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def test_train_writes_the_contract_files_and_json_progress(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)
        events = json_lines(self.result.stdout)
        self.assertEqual(events[0]["event"], "start")
        epochs = [e for e in events if e["event"] == "epoch"]
        self.assertTrue(1 <= len(epochs) <= 6)
        self.assertEqual(set(epochs[0]), {"event", "epoch", "epochs", "train_loss", "val_loss", "val_oa"})
        self.assertEqual(events[-1]["event"], "done")
        self.assertEqual(Path(events[-1]["model"]), (self.out / "model.onnx").resolve())
        self.assertEqual(sorted(p.name for p in self.out.iterdir()),
                         ["metrics.json", "model.json", "model.onnx", "model.pt"])

    def test_sidecar_describes_the_graph(self):
        meta = json.loads((self.out / "model.json").read_text())
        self.assertEqual(meta["contract"], "sitsflow-model/1")
        self.assertEqual(meta["input"]["shape"], ["N", 8, 2])
        self.assertEqual(meta["input"]["bands"], ["NIR", "R"])
        self.assertEqual(meta["input"]["dates"], [f"t{d:03d}" for d in range(8)])
        self.assertEqual(meta["output"]["classes"], [{"code": 4, "name": "wheat"}, {"code": 11, "name": "forest"},
                                                     {"code": 12, "name": "water"}])
        self.assertEqual(len(meta["normalisation"]["mean"]), 2)
        self.assertEqual(meta["opset"], export.OPSET)
        self.assertEqual(len(meta["training_data_sha256"]), 64)
        self.assertEqual(meta["metrics"]["evaluated_on"], "test")
        if HAVE_ORT:
            self.assertLess(meta["onnx_check"]["max_abs_diff"], 1e-5)

    def test_metrics_are_on_the_test_set_with_class_codes(self):
        m = json.loads((self.out / "metrics.json").read_text())
        self.assertEqual(m["samples"], 30)
        self.assertEqual(m["confusion_matrix"]["codes"], [4, 11, 12])
        self.assertEqual(np.sum(m["confusion_matrix"]["counts"]), 30)
        self.assertEqual([c["code"] for c in m["classes"]], [4, 11, 12])

    @unittest.skipUnless(HAVE_ORT, "onnxruntime not found (run scripts/setup.sh for .deps/onnxruntime-1.31.1)")
    def test_predict_gives_what_onnxruntime_computes(self):
        import onnxruntime as ort

        from sitsflow_models.data import read_samples

        probs_csv = Path(self.dir.name) / "probs.csv"
        r = run("predict", "--model", self.out / "model.onnx", "--samples", self.test_csv, "--out", probs_csv)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(probs_csv) as f:
            rows = list(csv.reader(f))
        self.assertEqual(rows[0], ["row", "id", "predicted", "4", "11", "12"])
        reference = np.array([[float(v) for v in row[3:]] for row in rows[1:]], dtype=np.float32)
        session = ort.InferenceSession(str(self.out / "model.onnx"), providers=["CPUExecutionProvider"])
        cube = read_samples(self.test_csv).cube
        got = session.run(["probabilities"], {"reflectance": cube})[0]
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)
        self.assertEqual([int(row[2]) for row in rows[1:]], [[4, 11, 12][i] for i in got.argmax(1)])

    def test_bench_prints_throughput(self):
        r = run("bench", "--model", self.out / "model.onnx", "--samples", self.test_csv, "--repeat", 2,
                "--threads", 1)
        self.assertEqual(r.returncode, 0, r.stderr)
        (result,) = json_lines(r.stdout)
        self.assertEqual(result["event"], "bench")
        self.assertEqual(result["samples"], 30)
        self.assertGreater(result["samples_per_s"], 0)


class ContractErrors(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = Path(self.dir.name)
        cube, targets, groups = synthetic.make(4, dates=3, bands=2, seed=0)
        self.samples = self.tmp / "s.csv"
        synthetic.write_csv(self.samples, cube, targets, groups)

    def tearDown(self):
        self.dir.cleanup()

    def assert_fails(self, result, message):
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn(message, result.stderr)
        last = json_lines(result.stdout)[-1]
        self.assertEqual(last["event"], "error")
        self.assertIn(message, last["message"])
        self.assertFalse((self.tmp / "out").exists(), "nothing is written on bad input")

    def test_unsupported_contract_version(self):
        r = run("train", "--contract", 2, "--samples", self.samples, "--arch", "lstm", "--out", self.tmp / "out")
        self.assert_fails(r, "contract version 2 is not supported")

    def test_missing_label_column(self):
        bad = self.tmp / "nolabel.csv"
        bad.write_text("class,B0@t000\nwheat,1\n")
        r = run("train", "--contract", 1, "--samples", bad, "--arch", "lstm", "--out", self.tmp / "out")
        self.assert_fails(r, "missing column `label`")

    def test_class_not_in_the_nomenclature(self):
        classes = self.tmp / "classes.csv"
        classes.write_text("code,name,color\n1,wheat,#ffff00\n2,forest,#008000\n")
        r = run("train", "--contract", 1, "--samples", self.samples, "--classes", classes, "--arch", "tempcnn",
                "--out", self.tmp / "out", "--missing", "keep")
        self.assert_fails(r, "water not in the nomenclature")

    def test_missing_and_infinite_values_name_line_and_column(self):
        r = run("train", "--contract", 1, "--samples", self.samples, "--arch", "tempcnn", "--out", self.tmp / "out")
        self.assert_fails(r, "s.csv:5:6: column `B0@t001`: empty cell; if missing values are meant, pass --missing keep")
        bad = self.tmp / "inf.csv"
        bad.write_text("label,B0@t000\nwheat,1\nforest,inf\n")
        r = run("train", "--contract", 1, "--samples", bad, "--arch", "tempcnn", "--out", self.tmp / "out",
                "--missing", "keep")
        self.assert_fails(r, "inf.csv:3:2: column `B0@t000`: `inf` is infinite")

    def test_unknown_architecture_is_a_usage_error(self):
        r = run("train", "--contract", 1, "--samples", self.samples, "--arch", "transformer", "--out", self.tmp / "out")
        self.assertEqual(r.returncode, 2)
        self.assertIn("invalid choice: 'transformer'", r.stderr)
        self.assertEqual(json_lines(r.stdout)[-1]["event"], "error")


if __name__ == "__main__":
    unittest.main()
