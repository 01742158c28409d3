"""The training recipe on a tiny synthetic set: it learns, it is deterministic, its
validation split is grouped, and its loss ignores unlabelled samples."""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import numpy as np
import torch

from sitsflow_models.train import (SMALL_CLASS, TrainConfig, augment_in_time, class_weights, grouped_split, make_loss,
                                   small_classes, train)

from . import synthetic


class Recipe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cube, cls.targets, cls.groups = synthetic.make(60, seed=1)
        cls.test_cube, cls.test_targets, _ = synthetic.make(40, seed=2)

    HYPERPARAMETERS = {"tempcnn": {"filters": 16, "dense": 32}, "lstm": {"hidden": 16},
                       "ltae": {"d_model": 32, "heads": 4, "d_k": 4}}

    def fit(self, arch, seed=0, epochs=15, **options):
        config = TrainConfig(arch=arch, seed=seed, epochs=epochs, batch_size=32, patience=5,
                             hyperparameters=self.HYPERPARAMETERS[arch], **options)
        return train(self.cube, self.targets, self.groups, ["B0", "B1", "B2"], 3, config)

    def accuracy(self, classifier):
        with torch.no_grad():
            predicted = classifier(torch.from_numpy(self.test_cube)).argmax(1).numpy()
        return float((predicted == self.test_targets).mean())

    def test_tempcnn_beats_chance(self):
        # Three balanced classes: chance is 1/3.
        self.assertGreater(self.accuracy(self.fit("tempcnn").classifier), 0.8)

    def test_lstm_beats_chance(self):
        self.assertGreater(self.accuracy(self.fit("lstm", epochs=25).classifier), 0.6)

    def test_ltae_beats_chance(self):
        self.assertGreater(self.accuracy(self.fit("ltae", epochs=25).classifier), 0.8)

    def test_time_augmentation_still_learns_and_is_seeded(self):
        a = self.fit("tempcnn", seed=5, epochs=15, drop_dates=0.2, shift_dates=1)
        self.assertGreater(self.accuracy(a.classifier), 0.8)
        b = self.fit("tempcnn", seed=5, epochs=2, drop_dates=0.2, shift_dates=1)
        same = [{k: v for k, v in e.items() if k != "epochs"} for e in a.history[:2]]
        self.assertEqual(same, [{k: v for k, v in e.items() if k != "epochs"} for e in b.history])

    def test_same_seed_gives_the_same_weights_and_history(self):
        a, b = self.fit("tempcnn", seed=3, epochs=3), self.fit("tempcnn", seed=3, epochs=3)
        self.assertEqual(a.history, b.history)
        for (name, x), (_, y) in zip(a.classifier.state_dict().items(), b.classifier.state_dict().items()):
            self.assertTrue(torch.equal(x, y), name)
        c = self.fit("tempcnn", seed=4, epochs=3)
        self.assertFalse(torch.equal(a.classifier.net.head.weight, c.classifier.net.head.weight))

    def test_normalisation_statistics_come_from_the_training_split_only(self):
        r = self.fit("tempcnn", epochs=1)
        expected = np.nanmean(self.cube[r.train_index].reshape(-1, 3).astype(np.float64), axis=0)
        np.testing.assert_allclose(r.mean, expected, rtol=1e-5)
        np.testing.assert_allclose(r.classifier.normalise.mean.reshape(-1).numpy(), r.mean)


class Distributed(unittest.TestCase):
    """TempCNN under torchrun with two CPU processes (DDP, gloo): both ranks end with the
    same weights, and the network is as good as the one trained by one process."""

    def test_two_ranks_hold_identical_weights_and_match_one_process(self):
        with tempfile.TemporaryDirectory() as out:
            models = Path(__file__).resolve().parents[1]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(models), os.environ.get("PYTHONPATH", "")])}
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                   str(models / "tests" / "ddp_worker.py"), out],
                                  env=env, capture_output=True, text=True, timeout=600)
            self.assertEqual(done.returncode, 0, done.stderr[-3000:])
            ranks = [json.loads((Path(out) / f"rank-{r}.json").read_text()) for r in (0, 1)]
        self.assertEqual([r["world_size"] for r in ranks], [2, 2])
        self.assertEqual(ranks[0]["weights"], ranks[1]["weights"], "DDP keeps the ranks' weights equal")
        self.assertEqual(ranks[0]["epochs"], ranks[1]["epochs"], "the ranks stop early together")
        # The same training in this one process (ddp_worker.py's data and settings).
        cube, targets, groups = synthetic.make(60, seed=1)
        test_cube, test_targets, _ = synthetic.make(40, seed=2)
        config = TrainConfig(arch="tempcnn", seed=0, epochs=15, batch_size=32, patience=5,
                             hyperparameters={"filters": 16, "dense": 32})
        single = train(cube, targets, groups, ["B0", "B1", "B2"], 3, config)
        self.assertEqual(single.world_size, 1)
        with torch.no_grad():
            predicted = single.classifier(torch.from_numpy(test_cube)).argmax(1).numpy()
        single_accuracy = float((predicted == test_targets).mean())
        self.assertGreater(ranks[0]["accuracy"], 0.8)
        self.assertLess(abs(ranks[0]["accuracy"] - single_accuracy), 0.1,
                        f"two processes {ranks[0]['accuracy']:.3f} vs one {single_accuracy:.3f}")


class TimeAugmentation(unittest.TestCase):
    def test_shifted_dates_move_and_the_dates_shifted_in_are_missing(self):
        x = torch.arange(2 * 6 * 2, dtype=torch.float32).reshape(2, 6, 2)
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            y = augment_in_time(x, 0.0, 2, g)
            for n in range(2):
                valid = ~torch.isnan(y[n, :, 0])
                shift = int(6 - valid.sum())
                self.assertLessEqual(shift, 2)
                # The valid dates are a run of the original series, in order, one step apart.
                kept = y[n][valid]
                steps = kept[1:, 0] - kept[:-1, 0]
                self.assertTrue(torch.all(steps == 2), y[n])
                self.assertTrue(torch.isnan(y[n][~valid]).all())

    def test_dropped_dates_lose_every_band_at_about_the_share(self):
        x = torch.ones(400, 20, 3)
        y = augment_in_time(x, 0.25, 0, torch.Generator().manual_seed(1))
        missing = torch.isnan(y)
        self.assertTrue(torch.equal(missing.all(-1), missing.any(-1)), "a date is dropped whole")
        self.assertAlmostEqual(float(missing.all(-1).float().mean()), 0.25, delta=0.02)

    def test_bad_settings_are_refused(self):
        cube, targets, groups = synthetic.make(10, seed=0)
        for options in ({"drop_dates": 1.0}, {"shift_dates": -1}):
            with self.assertRaises(Exception):
                train(cube, targets, groups, ["B0", "B1", "B2"], 3, TrainConfig(arch="tempcnn", epochs=1, **options))


class Split(unittest.TestCase):
    def test_no_group_on_both_sides_and_every_class_validated(self):
        _, targets, groups = synthetic.make(40, seed=0)
        train_index, validation = grouped_split(targets, groups, 0.2, np.random.default_rng(0))
        self.assertEqual(len(train_index) + len(validation), len(targets))
        self.assertFalse({groups[i] for i in train_index} & {groups[i] for i in validation})
        self.assertEqual(set(targets[validation]), {0, 1, 2})
        # 10 groups per class, 20 % held out: 2 groups of 4 samples each.
        self.assertEqual(len(validation), 3 * 2 * 4)

    def test_class_with_a_single_group_stays_in_training(self):
        targets = np.array([0, 0, 1, 1, 1, 1])
        groups = ["a", "a", "b", "b", "c", "c"]
        train_index, validation = grouped_split(targets, groups, 0.5, np.random.default_rng(0))
        self.assertEqual(set(targets[train_index]), {0, 1})
        self.assertEqual(set(targets[validation]), {1})


class Loss(unittest.TestCase):
    def test_weights_are_inverse_frequency_and_unlabelled_is_ignored(self):
        w = class_weights(np.array([0, 0, 0, 1, -1, -1]), 3)
        # 4 labelled samples: class 0 has 3, class 1 has 1, class 2 none.
        np.testing.assert_allclose(w, [4 / (3 * 3), 4 / (3 * 1), 0.0], rtol=1e-6)

    def test_weights_are_capped_so_a_tiny_class_does_not_steer_the_network(self):
        # 100 samples of class 0, 5 of class 1: uncapped, class 1 weighs 10.5 (105 / (2 × 5)).
        targets = np.array([0] * 100 + [1] * 5)
        np.testing.assert_allclose(class_weights(targets, 2), [105 / 200, 10.5], rtol=1e-6)
        np.testing.assert_allclose(class_weights(targets, 2, cap=3.0), [105 / 200, 3.0], rtol=1e-6)
        self.assertEqual(TrainConfig(arch="tempcnn").max_class_weight, 3.0)

    def test_classes_too_small_to_learn_are_listed_with_their_counts(self):
        targets = np.array([0] * 50 + [1] * 5 + [2] * SMALL_CLASS + [-1] * 3)
        self.assertEqual(small_classes(targets, 4), [(1, 5)], "class 3 has no sample, class 2 enough")

    def test_unlabelled_samples_add_no_loss(self):
        weights = class_weights(np.array([0, 1, 1, 2]), 3)
        loss = make_loss(weights)
        logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
        targets = torch.tensor([0, -1, 1, 1, -1, 2])
        keep = targets >= 0
        self.assertAlmostEqual(float(loss(logits, targets)), float(loss(logits[keep], targets[keep])), places=6)


if __name__ == "__main__":
    unittest.main()
