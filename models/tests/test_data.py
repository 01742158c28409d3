"""Samples CSV reading, nomenclature mapping and metrics."""

import tempfile
import unittest
from pathlib import Path

import numpy as np

from sitsflow_models.data import (ClassInfo, InputError, encode_labels, model_classes, read_classes,
                                  read_samples)
from sitsflow_models.metrics import report


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class ReadSamples(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = Path(self.dir.name)

    def tearDown(self):
        self.dir.cleanup()

    def test_band_interleaved_columns_become_n_t_b_with_nan_for_empty(self):
        f = write(self.tmp / "s.csv", "label,group,NIR@t000,R@t000,NIR@t001,R@t001\n"
                                      "wheat,p1,1,2,3,\n"
                                      "water,p2,5,6,7,8\n")
        s = read_samples(f)
        self.assertEqual(s.cube.shape, (2, 2, 2))
        self.assertEqual(s.bands, ["NIR", "R"])
        self.assertEqual(s.dates, ["t000", "t001"])
        self.assertEqual(s.cube[0, 1, 0], 3.0)
        self.assertTrue(np.isnan(s.cube[0, 1, 1]))
        self.assertEqual(s.groups, ["p1", "p2"])
        self.assertIsNone(s.ids)

    def test_band_major_column_order_gives_the_same_cube(self):
        a = read_samples(write(self.tmp / "a.csv", "label,B1@2018-01-01,B2@2018-01-01,B1@2018-02-01,B2@2018-02-01\n"
                                                   "x,1,2,3,4\n"))
        b = read_samples(write(self.tmp / "b.csv", "label,B1@2018-01-01,B1@2018-02-01,B2@2018-01-01,B2@2018-02-01\n"
                                                   "x,1,3,2,4\n"))
        np.testing.assert_array_equal(a.cube, b.cube)

    def test_missing_label_column_is_named(self):
        f = write(self.tmp / "s.csv", "name,B1@t000\nx,1\n")
        with self.assertRaisesRegex(InputError, "missing column `label`"):
            read_samples(f)

    def test_incomplete_grid_names_the_missing_column(self):
        f = write(self.tmp / "s.csv", "label,B1@t000,B2@t000,B1@t001\nx,1,2,3\n")
        with self.assertRaisesRegex(InputError, "B2@t001"):
            read_samples(f)

    def test_non_number_names_line_and_column(self):
        f = write(self.tmp / "s.csv", "label,B1@t000\nx,1\ny,abc\n")
        with self.assertRaisesRegex(InputError, r"s\.csv:3:2: column `B1@t000`: `abc`"):
            read_samples(f)

    def test_unknown_column_is_rejected(self):
        f = write(self.tmp / "s.csv", "label,foo,B1@t000\nx,1,2\n")
        with self.assertRaisesRegex(InputError, "column `foo`"):
            read_samples(f)


class Classes(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = Path(self.dir.name)
        self.samples = read_samples(write(self.tmp / "s.csv", "label,B1@t000\nwater,1\nwheat,2\n,3\nwater,4\n"))

    def tearDown(self):
        self.dir.cleanup()

    def test_integer_labels_are_codes(self):
        from sitsflow_models.data import ClassInfo, encode_labels, model_classes, names_for_codes

        f = write(self.tmp / "codes.csv", "label,B1@t000\n11,1\n4,2\n11,3\n")
        s = read_samples(f)
        classes = model_classes(s, None)
        self.assertEqual([(c.code, c.name) for c in classes], [(4, "4"), (11, "11")])
        self.assertEqual(encode_labels(s, classes, None).tolist(), [1, 0, 1])
        nomenclature = [ClassInfo(4, "wheat"), ClassInfo(11, "forest")]
        s = read_samples(f)
        names_for_codes(s, nomenclature)
        self.assertEqual(s.labels, ["forest", "wheat", "forest"])
        self.assertEqual([c.code for c in model_classes(s, nomenclature)], [4, 11])

    def test_without_nomenclature_names_are_sorted_and_numbered_from_1(self):
        classes = model_classes(self.samples, None)
        self.assertEqual(classes, [ClassInfo(1, "water"), ClassInfo(2, "wheat")])
        # The empty label is unlabelled: -1, ignored by the loss and the metrics.
        self.assertEqual(encode_labels(self.samples, classes, None).tolist(), [0, 1, -1, 0])

    def test_nomenclature_codes_are_kept_and_untrained_classes_dropped(self):
        nomenclature = read_classes(write(self.tmp / "c.csv", "code,name,color\n0,none,#000000\n"
                                                               "3,wheat,#ffff00\n12,water,#0000ff\n5,soy,#ff0000\n"))
        classes = model_classes(self.samples, nomenclature)
        self.assertEqual(classes, [ClassInfo(3, "wheat"), ClassInfo(12, "water")])
        self.assertEqual(encode_labels(self.samples, classes, nomenclature).tolist(), [1, 0, -1, 1])

    def test_class_outside_the_nomenclature_is_an_error(self):
        nomenclature = [ClassInfo(1, "wheat")]
        with self.assertRaisesRegex(InputError, "water not in the nomenclature"):
            model_classes(self.samples, nomenclature)

    def test_test_class_without_training_sample_is_an_error(self):
        test = read_samples(write(self.tmp / "t.csv", "label,B1@t000\nsoy,1\n"))
        with self.assertRaisesRegex(InputError, "`soy` has no training sample"):
            encode_labels(test, model_classes(self.samples, None), None)


class Metrics(unittest.TestCase):
    def test_against_hand_computed_values(self):
        # Confusion (rows reference, columns predicted): [[3, 1], [2, 4]]; one unlabelled sample skipped.
        reference = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, -1])
        predicted = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 0])
        r = report(reference, predicted, [ClassInfo(7, "a"), ClassInfo(9, "b")], "test")
        self.assertEqual(r["confusion_matrix"]["counts"], [[3, 1], [2, 4]])
        self.assertEqual(r["confusion_matrix"]["codes"], [7, 9])
        self.assertAlmostEqual(r["overall_accuracy"], 0.7)
        # p_e = (4*5 + 6*5) / 100 = 0.5 → kappa = (0.7 - 0.5) / 0.5
        self.assertAlmostEqual(r["kappa"], 0.4)
        a = r["classes"][0]
        self.assertAlmostEqual(a["precision"], 3 / 5)
        self.assertAlmostEqual(a["recall"], 3 / 4)
        self.assertAlmostEqual(a["f1"], 2 * 3 / (5 + 4))
        self.assertEqual(a["support"], 4)

    def test_class_never_predicted_has_f1_zero_not_undefined(self):
        r = report(np.array([0, 1]), np.array([0, 0]), [ClassInfo(1, "a"), ClassInfo(2, "b")], "test")
        self.assertIsNone(r["classes"][1]["precision"])
        self.assertEqual(r["classes"][1]["f1"], 0.0)
        self.assertAlmostEqual(r["macro_f1"], (2 / 3 + 0) / 2)


if __name__ == "__main__":
    unittest.main()
