"""Seed 000: ASUNet/ME's shapes and month modulation, the transition-set loss and the
temporal smoothness against their formulas written out, the Markov chain against brute
force, the ONNX export (two inputs), and training through gaps on a synthetic series
whose 10 m pixels mix classes the 2.5 m annotation separates."""

import itertools
import tempfile
import types
import unittest
from pathlib import Path

import numpy as np
import torch

from sitsflow_models import sen2vhr
from sitsflow_models.data import ClassInfo

from .test_segmentation import HAVE_ORT

TINY = {"width": 8, "depth": 2, "window": 2, "month_dim": 4}


class Network(unittest.TestCase):
    def test_the_output_is_transitions_on_the_finer_grid_and_the_month_modulates_the_skips(self):
        torch.manual_seed(0)
        model = sen2vhr.build(3, 4, 4, np.zeros(3), np.ones(3), TINY).eval()
        x = torch.randn(2, 2 * 3, 16, 16)
        x[0, :3, 2:5, 2:5] = float("nan")  # a cloud on the first date
        with torch.no_grad():
            out = model.probabilities(x, torch.tensor([4.0, 9.0]))
        self.assertEqual(tuple(out.shape), (2, 16, 64, 64))
        self.assertTrue(torch.isfinite(out).all())
        np.testing.assert_allclose(out.sum(1).numpy(), 1.0, atol=1e-5)
        # FiLM starts as the identity; once trained, the month changes the output.
        with torch.no_grad():
            same = model.probabilities(x, torch.tensor([7.0, 1.0]))
        self.assertLess(float((out - same).abs().max()), 1e-6)
        with torch.no_grad():
            model.net.film.mlp[-1].weight.normal_(0, 0.5)
            model.net.film.mlp[-1].bias.normal_(0, 0.5)
            # Batch statistics (not the untrained running ones, which shrink every
            # activation): the month's effect reaches the output at full size.
            model.train()
            model.net.dropout.p = 0.0
            a = model(x, torch.tensor([4.0, 9.0]))
            b = model(x, torch.tensor([7.0, 1.0]))
        self.assertGreater(float((a - b).abs().max()), 1e-2)
        with self.assertRaisesRegex(ValueError, "power of two"):
            sen2vhr.build(3, 4, 3, np.zeros(3), np.ones(3), TINY)

    @unittest.skipUnless(HAVE_ORT, "onnxruntime not importable (scripts/setup.sh unpacks it into .deps/)")
    def test_onnx_runtime_matches_pytorch(self):
        torch.manual_seed(1)
        model = sen2vhr.build(3, 3, 4, np.full(3, 0.2), np.full(3, 0.1), TINY).eval()
        with torch.no_grad():
            model.net.film.mlp[-1].weight.normal_(0, 0.3)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.3, 0.3)
                    m.running_var.uniform_(0.5, 2.0)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.onnx"
            sen2vhr.export_onnx(model, path, 17)
            rng = np.random.default_rng(0)
            for n, side in [(1, 8), (3, 24)]:
                x = rng.uniform(0, 0.5, (n, 6, side, side)).astype(np.float32)
                x[rng.random(x.shape) < 0.1] = np.nan
                month = rng.integers(1, 13, n).astype(np.float32)
                diff, _ = sen2vhr.onnx_max_abs_diff(path, model, x, month)
                self.assertLess(diff, 1e-5, (n, side))


class Losses(unittest.TestCase):
    def test_the_transition_set_loss_is_minus_the_log_of_the_allowed_transitions(self):
        torch.manual_seed(2)
        k = 3
        log_p = torch.log_softmax(torch.randn(2, k * k, 4, 4), dim=1)
        target = torch.randint(0, k, (2, 4, 4))
        target[0, 0, 0] = -1
        got = float(sen2vhr.transition_set_loss(log_p, target, k))
        p = log_p.exp().numpy()
        terms = []
        for n, r, c in itertools.product(range(2), range(4), range(4)):
            j = int(target[n, r, c])
            if j < 0:
                continue
            terms.append(-np.log(sum(p[n, i * k + j, r, c] for i in range(k))))
        self.assertAlmostEqual(got, float(np.mean(terms)), places=5)

    def test_two_annotations_allow_staying_or_changing_from_the_earlier_class(self):
        torch.manual_seed(5)
        k = 3
        log_p = torch.log_softmax(torch.randn(1, k * k, 1, 3), dim=1)
        target = torch.tensor([[[2, 1, 0]]])
        previous = torch.tensor([[[2, 0, -1]]])  # kept, changed 0 → 1, no earlier annotation
        got = float(sen2vhr.transition_set_loss(log_p, target, k, previous))
        p = log_p.exp()[0, :, 0].numpy()
        want = np.mean([-np.log(p[2 * k + 2, 0]), -np.log(p[1 * k + 1, 1] + p[0 * k + 1, 1]), -np.log(p[0, 2])])
        self.assertAlmostEqual(got, float(want), places=5)

    def test_smoothness_is_the_kl_divergence_between_consecutive_dates(self):
        torch.manual_seed(3)
        a = torch.log_softmax(torch.randn(1, 9, 2, 2), dim=1)
        b = torch.log_softmax(torch.randn(1, 9, 2, 2), dim=1)
        pa, pb = a.exp().numpy(), b.exp().numpy()
        want = np.mean([(pa[0, :, r, c] * np.log(pa[0, :, r, c] / pb[0, :, r, c])).sum()
                        for r in range(2) for c in range(2)])
        self.assertAlmostEqual(float(sen2vhr.smoothness(a, b)), float(want), places=5)
        self.assertAlmostEqual(float(sen2vhr.smoothness(a, a)), 0.0, places=6)

    def test_the_markov_chain_finds_the_best_consistent_sequence(self):
        rng = np.random.default_rng(4)
        k, t_count = 3, 4
        log_p = np.log(rng.dirichlet(np.ones(k * k), size=(t_count, 5)).transpose(0, 2, 1))  # [T, K², 5 px]
        got = sen2vhr.viterbi(log_p, k)
        for px in range(5):
            best, best_seq = -np.inf, None
            for seq in itertools.product(range(k), repeat=t_count):
                score = max(log_p[0, i * k + seq[0], px] for i in range(k))
                score += sum(log_p[t, seq[t - 1] * k + seq[t], px] for t in range(1, t_count))
                if score > best:
                    best, best_seq = score, seq
            self.assertEqual(tuple(got[:, px]), best_seq)


def synthetic_series(size=32, dates=6, scale=4, seed=0):
    """Parcels drawn on the fine grid (so many 10 m pixels are mixed), each class with its
    own NDVI-like curve; the 10 m series averages the fine pixels; clouds as NaN gaps.
    One annotation on the fine grid, dated on the third date."""
    rng = np.random.default_rng(seed)
    fine = size * scale
    labels = np.zeros((fine, fine), np.int64)
    for _ in range(40):
        r, c = rng.integers(0, fine, 2)
        hgt, wid = rng.integers(6, 30, 2)
        labels[r:r + hgt, c:c + wid] = rng.integers(0, 3)
    curves = np.array([[0.2, 0.4, 0.8, 0.8, 0.5, 0.2], [0.6, 0.6, 0.6, 0.6, 0.6, 0.6], [0.1, 0.1, 0.15, 0.1, 0.1, 0.1]])
    values = curves[labels][..., :dates].transpose(2, 0, 1)  # [T, fine, fine]
    coarse = values.reshape(dates, size, scale, size, scale).mean(axis=(2, 4))
    image = (coarse + 0.02 * rng.standard_normal(coarse.shape))[:, None].astype(np.float32)
    image[1, :, 5:12, 5:12] = np.nan
    dates_s = [f"2018-{m:02d}-10" for m in range(3, 3 + dates)]
    return sen2vhr.SeriesData(image=image, dates=dates_s, bands=["NDVI"], annotations=labels[None],
                              annotation_dates=["2018-05-12"], scale=scale,
                              classes=[ClassInfo(1, "a"), ClassInfo(2, "b"), ClassInfo(3, "c")])


class Masks(unittest.TestCase):
    def test_a_cloudy_series_pixel_masks_its_whole_block_of_the_finer_grid(self):
        date = np.zeros((2, 12, 12), np.float32)
        date[:, 5, 7] = np.nan   # every band: missing
        date[0, 2, 2] = np.nan   # one band only: still observed
        m = sen2vhr.missing_under(date, 0, 0, 12, 4)
        want = np.zeros((48, 48), bool)
        want[20:24, 28:32] = True
        np.testing.assert_array_equal(m, want)
        # A window off the scene's edge mirrors whole pixels: row 5 comes back at −5 … as 5.
        m = sen2vhr.missing_under(date, -8, 4, 8, 2)
        rows = np.flatnonzero(m.any(axis=1)) // 2
        self.assertEqual(sorted(set((rows - 8).tolist())), [-5])


class Placement(unittest.TestCase):
    """Where a fine pixel sits (issue #34 item 4): a 10 m pixel (r, c) covers the fine
    rows r·s … r·s + s − 1 and columns c·s … c·s + s − 1, in training patches, in the
    network's lifting decoder and in the tiles of a prediction."""

    def test_a_patch_takes_the_fine_pixels_under_its_coarse_window(self):
        rng = np.random.default_rng(6)
        s, h, w, size = 4, 9, 11, 6
        fine = rng.random((2, h * s, w * s))  # two bands on the fine grid
        coarse = fine.reshape(2, h, s, w, s).mean(axis=(2, 4))  # each 10 m pixel the mean of its block
        rows_of = np.broadcast_to(np.arange(h * s)[:, None] // s, (h * s, w * s))
        cols_of = np.broadcast_to(np.arange(w * s)[None, :] // s, (h * s, w * s))
        missing = rng.random((h, w)) < 0.2
        date = np.where(missing, np.nan, coarse).astype(np.float32)
        for top, left in [(0, 0), (2, 3), (h - size, w - size), (-3, 4), (5, -2), (h - 2, w - 1)]:
            want_rows = sen2vhr._reflect(np.arange(top, top + size), h)
            want_cols = sen2vhr._reflect(np.arange(left, left + size), w)
            # Fine pixel (i, j) of the patch lies in the patch's coarse pixel (i // s, j // s).
            np.testing.assert_array_equal(sen2vhr.fine_window(rows_of, top, left, size, s),
                                          np.repeat(np.broadcast_to(want_rows[:, None], (size, size)), s, 0).repeat(s, 1))
            np.testing.assert_array_equal(sen2vhr.fine_window(cols_of, top, left, size, s),
                                          np.repeat(np.broadcast_to(want_cols[None, :], (size, size)), s, 0).repeat(s, 1))
            # So the input window is the block mean of the fine window, pixel for pixel …
            x = sen2vhr.window_of(coarse[None], 0, 2, top, left, size)[2:]  # the target date's two bands
            under = sen2vhr.fine_window(fine, top, left, size, s)
            np.testing.assert_allclose(x, under.reshape(2, size, s, size, s).mean(axis=(2, 4)), atol=1e-12)
            # … and the loss mask covers exactly the blocks of the missing pixels.
            np.testing.assert_array_equal(sen2vhr.missing_under(date, top, left, size, s),
                                          sen2vhr.fine_window(np.kron(missing, np.ones((s, s), bool)), top, left, size, s))

    def test_the_lifting_decoder_centres_a_coarse_pixels_features_on_its_own_block(self):
        # With every lifting weight equal (batch norm the identity), the fine response to
        # one coarse pixel is symmetric about the centre of that pixel's s × s block: the
        # transposed convolutions put coarse pixel i on fine pixels i·s … i·s + s − 1.
        for scale in (2, 4, 8):
            net = sen2vhr.ASUNet(1, 2, scale, window=2, width=8, depth=1).eval()
            with torch.no_grad():
                for m in net.lift.modules():
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                        m.weight.fill_(0.1)
                        m.bias.zero_()
                    elif isinstance(m, torch.nn.BatchNorm2d):
                        m.reset_parameters()
                x = torch.zeros(1, 8, 7, 7)
                x[0, :, 3, 2] = 1.0  # coarse pixel (3, 2)
                for lift in net.lift:
                    x = lift(x)
            response = x[0].sum(0).numpy()
            self.assertEqual(response.shape, (7 * scale, 7 * scale))
            r, c = np.mgrid[0:7 * scale, 0:7 * scale]
            centre = ((3 + 0.5) * scale - 0.5, (2 + 0.5) * scale - 0.5)
            total = response.sum()
            self.assertGreater(total, 0)
            self.assertAlmostEqual(float((response * r).sum() / total), centre[0], places=4, msg=f"scale {scale}")
            self.assertAlmostEqual(float((response * c).sum() / total), centre[1], places=4, msg=f"scale {scale}")
            self.assertTrue((response[3 * scale:4 * scale, 2 * scale:3 * scale] > 0).all(), f"scale {scale}")

    def test_tiles_put_each_coarse_pixels_output_on_its_own_block_of_the_scene(self):
        class Lift(torch.nn.Module):
            """Stands in for the network: on the fine grid, channel 0 is the coarse pixel's
            value (the target date's band), channels 1 and 2 the fine row and column inside
            the tile's block of that pixel."""

            def __init__(self, scale, multiple):
                super().__init__()
                self.net = types.SimpleNamespace(scale=scale, window=2, classes=2, multiple=multiple)

            def probabilities(self, x, month):
                s = self.net.scale
                value = x[:, -1:].repeat_interleave(s, 2).repeat_interleave(s, 3)
                n, _, hs, ws = value.shape
                rows = (torch.arange(hs) % s).float().view(1, 1, hs, 1).expand(n, 1, hs, ws)
                cols = (torch.arange(ws) % s).float().view(1, 1, 1, ws).expand(n, 1, hs, ws)
                return torch.cat([value, rows, cols, torch.zeros_like(value)], 1)

        h, w = 13, 21
        ids = np.arange(h * w, dtype=np.float32).reshape(h, w)
        image = np.stack([ids - 1000, ids])[:, None]  # [T, B, H, W]: the target date holds the ids
        for s, tile, overlap, multiple in [(4, 12, 2, 2), (2, 16, 4, 4), (8, 8, 2, 2)]:
            out = sen2vhr.predict_date(Lift(s, multiple), image, 1, "2018-06-01", tile=tile, overlap=overlap)
            self.assertEqual(out.shape, (4, h * s, w * s))
            np.testing.assert_array_equal(out[0], np.kron(ids, np.ones((s, s), np.float32)), f"scale {s}, tile {tile}")
            r, c = np.mgrid[0:h * s, 0:w * s]
            np.testing.assert_array_equal(out[1], r % s)
            np.testing.assert_array_equal(out[2], c % s)


class Norms(unittest.TestCase):
    def test_batch_norms_are_re_estimated_on_the_final_weights(self):
        torch.manual_seed(7)
        model = sen2vhr.build(2, 2, 4, np.zeros(2), np.ones(2), {**TINY, "dropout": 0.0})
        first = model.net.down[0][1]  # the first batch norm
        with torch.no_grad():
            first.running_mean.fill_(5.0)  # stale statistics, as of earlier weights
        seen = []
        hook = first.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
        batches = [(torch.rand(3, 4, 8, 8), torch.rand(3, 4, 8, 8), torch.tensor([[4.0, 5.0]] * 3)) for _ in range(3)]
        sen2vhr.recalibrate_norms(model, iter(batches))
        hook.remove()
        self.assertEqual(len(seen), 6, "both dates of every batch")
        # The plain average of the batches' means (no momentum), and the momentum back.
        want = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
        torch.testing.assert_close(first.running_mean, want, rtol=1e-5, atol=1e-6)
        self.assertEqual(first.momentum, 0.1)
        self.assertFalse(model.training)


def straight_boundaries(h=16, w=24, scale=4, dates=4, column=38, row=42, seed=0):
    """Two classes on the fine grid with distinct spectra: class 1 right of fine column
    `column` and below fine row `row`, class 0 in the top-left corner; each 10 m pixel the
    exact mean of its block (plus small noise), every date annotated. 38 and 42 are 4k + 2:
    the boundaries halve 10 m pixels, so any 10 m map puts them two fine pixels off."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:h * scale, 0:w * scale]
    labels = ((c >= column) | (r >= row)).astype(np.int64)
    spectra = np.array([[0.2, 0.6], [0.5, 0.1]])  # [class, band]
    fine = spectra[labels].transpose(2, 0, 1)[None] * (1 + 0.05 * np.arange(dates))[:, None, None, None]
    fine = fine + 0.01 * rng.standard_normal(fine.shape)
    image = fine.reshape(dates, 2, h, scale, w, scale).mean(axis=(3, 5)).astype(np.float32)
    dates_s = [f"2018-{m:02d}-10" for m in range(4, 4 + dates)]
    return sen2vhr.SeriesData(image=image, dates=dates_s, bands=["a", "b"], annotations=np.stack([labels] * dates),
                              annotation_dates=list(dates_s), scale=scale,
                              classes=[ClassInfo(1, "left"), ClassInfo(2, "right")])


def boundary_at(line: np.ndarray) -> int:
    """The position where class 1 begins that best fits `line` (class 0 before it)."""
    ones_before = np.concatenate([[0], np.cumsum(line == 1)])
    zeros_after = np.concatenate([[0], np.cumsum((line == 0)[::-1])])[::-1]
    return int(np.argmin(ones_before + zeros_after))


class Boundary(unittest.TestCase):
    def setUp(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def tearDown(self):
        torch.set_num_threads(self.threads)

    def test_a_boundary_inside_10m_pixels_is_mapped_on_its_fine_pixel(self):
        column, row = 38, 42
        data = straight_boundaries(column=column, row=row)
        config = sen2vhr.SrConfig(seed=0, epochs=60, patches_per_epoch=64, batch_size=8, patch=8, smoothness=0.0,
                                  learning_rate=3e-3, test_fraction=0.0, block=4, patience=100,
                                  hyperparameters={"width": 8, "depth": 1, "window": 2, "month_dim": 4, "dropout": 0.0})
        result = sen2vhr.train(data, config)
        # By tiles of 16 px with 4 px of context: cores of 8 px, so seams cross the scene.
        p = sen2vhr.predict_series(result.model, data.image, data.dates, tile=16, overlap=4)
        labels = p.reshape(p.shape[0], 2, 2, *p.shape[2:]).sum(axis=1).argmax(axis=1)
        # Any 10 m map (here the annotation's majority) is two fine pixels off.
        from sitsflow_models.sr_cli import majority
        coarse = np.kron(majority(data.annotations[:1], 4, 2)[0], np.ones((4, 4), np.int64))
        self.assertEqual({abs(boundary_at(coarse[r]) - column) for r in range(row - 8)}, {2})
        # The network's, on every date with a previous one, row by row (column by column)
        # away from the corner: on the true fine pixel in the median row — a map shifted
        # by one fine pixel fails here — and within one fine pixel in nine rows of ten (a
        # stray blob of a few rows beside the boundary is a small network's, not placement).
        for t in range(1, len(data.dates)):
            across = np.array([boundary_at(labels[t, r]) for r in range(row - 8)]) - column
            down = np.array([boundary_at(labels[t, :, c]) for c in range(column - 8)]) - row
            for name, errors in (("vertical", across), ("horizontal", down)):
                self.assertEqual(float(np.median(errors)), 0.0, f"date {t}, {name} boundary: {errors.tolist()}")
                self.assertGreaterEqual(float(np.mean(np.abs(errors) <= 1)), 0.9,
                                        f"date {t}, {name} boundary: {errors.tolist()}")


class Training(unittest.TestCase):
    def test_training_through_gaps_lowers_the_loss_and_predicts_every_date(self):
        data = synthetic_series()
        self.assertEqual(sen2vhr.annotated_targets(data, 5), {2: 0})
        config = sen2vhr.SrConfig(seed=0, epochs=6, patches_per_epoch=16, batch_size=4, patch=16, smoothness=0.1,
                                  hyperparameters=TINY, patience=100)
        events = []
        result = sen2vhr.train(data, config, events.append)
        losses = [e["cross_entropy"] for e in events if e["event"] == "epoch"]
        self.assertLess(np.mean(losses[-2:]), losses[0])
        p = sen2vhr.predict_series(result.model, data.image, data.dates, tile=32, overlap=8)
        self.assertEqual(p.shape, (6, 9, 128, 128))
        self.assertTrue(np.isfinite(p).all())
        seq = sen2vhr.viterbi(np.log(np.maximum(p, 1e-12)), 3)
        self.assertEqual(seq.shape, (6, 128, 128))

    def test_an_annotation_far_from_every_date_is_refused(self):
        data = synthetic_series()
        data.annotation_dates = ["2019-01-01"]
        with self.assertRaisesRegex(Exception, "within 5 days"):
            sen2vhr.train(data, sen2vhr.SrConfig(epochs=1, hyperparameters=TINY))


if __name__ == "__main__":
    unittest.main()


class CommandLine(unittest.TestCase):
    def test_train_writes_the_per_date_table_the_ablation_and_the_mixed_pixels(self):
        import json

        from sitsflow_models import patches

        from .test_segmentation import run

        data = synthetic_series(size=32, dates=6)
        with tempfile.TemporaryDirectory() as d:
            ds = Path(d) / "ds"
            t_count, b, h, w = data.image.shape
            patches.write(ds, data.image.reshape(t_count * b, h, w), np.zeros((h, w), np.uint16),
                          np.zeros((h, w), np.uint32), ["NDVI"], data.dates, data.classes,
                          fine=(data.annotations + 1).astype(np.uint16), fine_dates=data.annotation_dates)
            out = Path(d) / "model"
            result = run("-m", "sitsflow_models", "train", "--contract", 1, "--patches", ds, "--arch", "asunet",
                         "--out", out, "--epochs", 3, "--batch-size", 4, "--patches-per-epoch", 8, "--patch", 16,
                         "--tile", 32, "--overlap", 8, "--ablation", "--baseline",
                         "--hyperparameters", json.dumps(TINY))
            self.assertEqual(result.returncode, 0, result.stderr)
            metrics = json.loads((out / "metrics.json").read_text())
            row = metrics["per_date"][0]
            self.assertEqual((row["vhr_date"], row["hr_date"]), ("2018-05-12", "2018-05-10"))
            self.assertIsNotNone(row["accuracy"])
            self.assertEqual([r["smoothness"] for r in metrics["ablation"]["rows"]], [0.1, 0.0])
            mixed = metrics["mixed_pixels"]
            self.assertGreater(mixed["pixels"], 0)
            self.assertEqual(set(mixed["accuracy"]), {"fine", "oracle_10m", "oracle_10m_trained", "network_10m"})
            # One annotation, trained on: every class was seen, the two majorities agree.
            self.assertEqual(mixed["untrained_classes"], [])
            self.assertEqual(mixed["accuracy"]["oracle_10m_trained"], mixed["accuracy"]["oracle_10m"])
            self.assertEqual(sum(e["pixels"] for e in mixed["by_classes"].values()), mixed["pixels"])
            self.assertTrue(all(" + " in name for name in mixed["by_classes"]), list(mixed["by_classes"]))
            self.assertIn("markov", metrics["consistency"])
            sidecar = json.loads((out / "model.json").read_text())
            self.assertEqual(sidecar["output"]["scale"], 4)
            self.assertEqual(sidecar["input"]["month"]["name"], "month")
            if HAVE_ORT:
                self.assertLess(sidecar["onnx_check"]["max_abs_diff"], 1e-4)
