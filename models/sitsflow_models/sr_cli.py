"""`train --arch asunet --patches DIR`: seed 000's super-resolution segmentation under the
file contract (same events, exit codes and output files as the other recipes).

The dataset is a patch dataset whose `image.npy` holds every date of the series and
whose `fine.npy` holds dated annotations on a grid `s` times finer. metrics.json has the
seed's tables: per annotation date, the HR date used and the accuracy (each date's own
labels, and the Markov chain's consistent sequence); the λ ablation (`--ablation`: the
same network trained with λ = 0); the consistency of the sequences with and without the
Markov chain; and on the 10 m pixels that mix classes, the 2.5 m maps against
nearest-upsampled 10 m ones (`--baseline`: the same network trained at scale 1 on the
annotations' majority per 10 m pixel; and the majority itself, the best any 10 m map
can do).
"""

from __future__ import annotations

import time
import json
from pathlib import Path

import numpy as np

SIDECAR_CONTRACT = "sitsflow-model/1"


def _indices(fine: np.ndarray, codes: list[int]) -> np.ndarray:
    index = np.full(65536, -1, dtype=np.int64)
    for i, c in enumerate(codes):
        index[c] = i
    return index[np.asarray(fine)]


def majority(labels: np.ndarray, scale: int, classes: int, among: list[int] | None = None) -> np.ndarray:
    """Per coarse pixel, the most frequent labelled class of its `scale × scale` block
    (−1 where none is labelled): `[A, H·s, W·s]` → `[A, H, W]`. With `among`, only those
    classes may win (−1 where the block holds none of them)."""
    a, hs, ws = labels.shape
    blocks = labels.reshape(a, hs // scale, scale, ws // scale, scale).transpose(0, 1, 3, 2, 4).reshape(
        a, hs // scale, ws // scale, scale * scale)
    counts = np.stack([(blocks == c).sum(-1) if among is None or c in among else np.zeros(blocks.shape[:-1], np.int64)
                       for c in range(classes)], axis=-1)
    out = counts.argmax(-1)
    out[counts.sum(-1) == 0] = -1
    return out


def mixed(labels: np.ndarray, scale: int) -> np.ndarray:
    """Fine pixels whose coarse pixel's block holds more than one labelled class."""
    a, hs, ws = labels.shape
    blocks = labels.reshape(a, hs // scale, scale, ws // scale, scale)
    lo = np.where(blocks >= 0, blocks, np.iinfo(np.int64).max).min(axis=(2, 4))
    hi = blocks.max(axis=(2, 4))
    coarse = (hi >= 0) & (lo != hi)
    return np.repeat(np.repeat(coarse, scale, axis=1), scale, axis=2)


def _accuracy(pred: np.ndarray, truth: np.ndarray, keep: np.ndarray) -> float | None:
    keep = keep & (truth >= 0)
    return float((pred[keep] == truth[keep]).mean()) if keep.any() else None


def _changes(sequence: np.ndarray, where: np.ndarray) -> dict:
    """How often a pixel's label changes along the dates, over the pixels `where` (those
    every annotation labels): the mean count and the share that change at least once."""
    changes = (sequence[1:] != sequence[:-1]).sum(axis=0)[where]
    return {"mean_changes": float(changes.mean()) if changes.size else None,
            "changing_pixels": float((changes > 0).mean()) if changes.size else None, "pixels": int(changes.size)}


def _evaluate(result, data, args, log) -> dict:
    from .sen2vhr import annotated_targets, day_of, predict_decode

    labels, markov = predict_decode(result.model, data.image, data.dates, args.tile, args.overlap)
    fine_roles = np.kron(result.roles, np.ones((data.scale, data.scale), np.int64))
    nearest = annotated_targets(data, args.valid_days)
    rows = []
    for a, date in enumerate(data.annotation_dates):
        held = a in result.test_annotations
        candidates = [t for t, b in nearest.items() if b == a]
        if not candidates:
            rows.append({"vhr_date": date, "hr_date": None, "role": "test" if held else "train", "accuracy": None})
            continue
        t = min(candidates, key=lambda u: abs(day_of(data.dates[u]) - day_of(date)))
        keep = np.ones_like(fine_roles, bool) if held else fine_roles == 2
        truth = data.annotations[a]
        rows.append({"vhr_date": date, "hr_date": data.dates[t], "days_apart": abs(day_of(data.dates[t]) - day_of(date)),
                     "role": "test (date left out)" if held else "train (test blocks)",
                     "pixels": int((keep & (truth >= 0)).sum()),
                     "accuracy": _accuracy(labels[t], truth, keep),
                     "accuracy_markov": _accuracy(markov[t], truth, keep)})
        log(f"  {date} (HR {data.dates[t]}): accuracy {rows[-1]['accuracy']}, with the Markov chain "
            f"{rows[-1]['accuracy_markov']}")
    annotated = (data.annotations >= 0).all(axis=0)
    truth_changes = None
    if len(data.annotation_dates) > 1:
        truth_changes = _changes(data.annotations, annotated)
    return {"per_date": rows, "labels": labels, "markov": markov,
            "consistency": {"rule": "label changes along the series on the fine pixels every annotation labels",
                            "per_date_labels": _changes(labels, annotated), "markov": _changes(markov, annotated),
                            "annotations": truth_changes}}


def _mixed_pixels(data, evaluation, baseline_labels, roles, test_annotations) -> dict:
    """Accuracy on the fine pixels of mixed 10 m pixels (test blocks, annotated dates)."""
    from .sen2vhr import annotated_targets, day_of

    k = len(data.classes)
    s = data.scale
    mix = mixed(data.annotations, s)
    oracle = majority(data.annotations, s, k)
    # The classes some training annotation labels: a network can only map those, so the
    # majority among them is the best a 10 m map of such a network can do (a class only a
    # left-out date has — the demo's dry trees of 2020 — is never right).
    trained = [c for c in range(k)
               if any((data.annotations[a] == c).any() for a in range(len(data.annotation_dates)) if a not in test_annotations)]
    oracle_trained = majority(data.annotations, s, k, among=trained)
    fine_roles = np.kron(roles, np.ones((s, s), np.int64))
    nearest = annotated_targets(data, 10**6)
    out = {"fine": [0, 0], "oracle_10m": [0, 0], "oracle_10m_trained": [0, 0], "network_10m": [0, 0], "pixels": 0}
    by_classes: dict[str, dict] = {}
    per_date = []
    for a in range(len(data.annotation_dates)):
        candidates = [t for t, b in nearest.items() if b == a]
        if not candidates:
            continue
        t = min(candidates, key=lambda u: abs(day_of(data.dates[u]) - day_of(data.annotation_dates[a])))
        truth = data.annotations[a]
        # A date left out of training is assessed everywhere; the others on the test blocks.
        held = a in test_annotations or not (roles == 2).any()
        keep = mix[a] & (truth >= 0) & (True if held else fine_roles == 2)
        out["pixels"] += int(keep.sum())
        preds = {"fine": evaluation["labels"][t],
                 "oracle_10m": np.repeat(np.repeat(oracle[a], s, axis=0), s, axis=1),
                 "oracle_10m_trained": np.repeat(np.repeat(oracle_trained[a], s, axis=0), s, axis=1)}
        if baseline_labels is not None:
            preds["network_10m"] = np.repeat(np.repeat(baseline_labels[t], s, axis=0), s, axis=1)
        row = {"vhr_date": data.annotation_dates[a], "hr_date": data.dates[t], "pixels": int(keep.sum()),
               "assessed_on": "everywhere (date left out)" if held and (roles == 2).any() else "test blocks"}
        for name, pred in preds.items():
            out[name][0] += int((pred[keep] == truth[keep]).sum())
            out[name][1] += int(keep.sum())
            row[name] = float((pred[keep] == truth[keep]).mean()) if keep.any() else None
        # The same pixels by the classes their 10 m block holds (which boundaries they are).
        present = np.stack([(truth == c).reshape(truth.shape[0] // s, s, truth.shape[1] // s, s).any(axis=(1, 3))
                            for c in range(k)])
        code = np.repeat(np.repeat((present * (1 << np.arange(k))[:, None, None]).sum(0), s, axis=0), s, axis=1)
        for combination in np.unique(code[keep]):
            where = keep & (code == combination)
            name = " + ".join(data.classes[c].name for c in range(k) if int(combination) >> c & 1)
            entry = by_classes.setdefault(name, {"pixels": 0, **{p: 0 for p in preds}})
            entry["pixels"] += int(where.sum())
            for p, pred in preds.items():
                entry[p] = entry.get(p, 0) + int((pred[where] == truth[where]).sum())
        per_date.append(row)
    return {"pixels": out["pixels"],
            "rule": "fine pixels of the 10 m pixels whose block holds more than one class in the annotation "
                    "(test blocks, or everywhere for a date left out of training), at each annotation's HR date",
            "accuracy": {name: (v[0] / v[1] if v[1] else None) for name, v in out.items() if name != "pixels"},
            "per_date": per_date,
            "by_classes": {name: {"pixels": e["pixels"],
                                  **{p: (e[p] / e["pixels"] if e["pixels"] else None) for p in e if p != "pixels"}}
                           for name, e in sorted(by_classes.items(), key=lambda item: -item[1]["pixels"])},
            "untrained_classes": [data.classes[c].name for c in range(k) if c not in trained],
            "baselines": {"oracle_10m": "the annotation's majority per 10 m pixel, upsampled by nearest: the best "
                                        "any 10 m map can do",
                          "oracle_10m_trained": "the majority among the classes a training annotation labels, "
                                                "upsampled: the best a 10 m map of a network that never saw the "
                                                "others can do",
                          "network_10m": "the same network trained at scale 1 on those majorities, its maps "
                                         "upsampled by nearest"}}


def _series(dataset, args):
    """The dataset's cube date-major `[T, B, H, W]`, whatever its channels' order."""
    from .data import InputError

    t_count, b = len(dataset.dates), len(dataset.bands)
    _, h, w = dataset.image.shape
    order = [f"{band}@{date}" for date in dataset.dates for band in dataset.bands]
    missing = [n for n in order if n not in dataset.channels]
    if missing:
        raise InputError(f"{args.patches}: no channel {missing[0]} (the channels must be every BAND@DATE)")
    index = [dataset.channels.index(n) for n in order]
    return np.asarray(dataset.image)[index].reshape(t_count, b, h, w), order


def predict_sr_command(args, emit, log) -> int:
    """`predict --model …/model.onnx --patches DIR --out F.npy`: the PyTorch model's maps
    of every date, `[2, T, H·s, W·s]` class codes — each date's own labels, then the Markov
    chain's sequence — by the host's tiles: the reference the host's maps are checked on."""
    import torch

    from . import patches
    from .data import InputError
    from .export import replace_atomically
    from .sen2vhr import build, predict_decode

    checkpoint_path = args.model.parent / "model.pt"
    if not checkpoint_path.is_file():
        raise InputError(f"{checkpoint_path}: missing (predict runs the PyTorch model saved beside model.onnx)")
    checkpoint = torch.load(str(checkpoint_path), map_location="cpu", weights_only=True)
    config = checkpoint["config"]
    model = build(config["bands"], config["classes"], config["scale"], config["mean"], config["std"],
                  config["hyperparameters"])
    model.load_state_dict(checkpoint["state_dict"])
    sidecar = json.loads((args.model.parent / "model.json").read_text())
    dataset = patches.read(args.patches)
    image, order = _series(dataset, args)
    if order != sidecar["input"]["channels"]:
        raise InputError(f"{args.patches}: its dates and bands differ from the model's")
    tile = args.tile or sidecar["tiling"]["tile"]
    overlap = sidecar["tiling"]["overlap"] if args.overlap is None else args.overlap
    labels, markov = predict_decode(model, image, dataset.dates, tile, overlap)
    codes = np.array([c["code"] for c in sidecar["output"]["classes"]], np.uint16)
    out = np.stack([codes[labels], codes[markov]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npy")
    np.save(tmp, out)
    replace_atomically(tmp, args.out)
    log(f"{args.out}: labels and Markov sequence {list(out.shape)} (tile {tile}, overlap {overlap})")
    emit({"event": "done", "maps": str(args.out.resolve()), "shape": list(out.shape)})
    return 0


def train_sr_command(args, emit, log, write_json) -> int:
    import torch

    from . import export, patches
    from .data import InputError, sha256_file
    from .publish import Graph, publish
    from .sen2vhr import (ARCH, INPUT_NAME, MONTH_NAME, OUTPUT_NAME, SeriesData, SrConfig, build,
                          default_hyperparameters, effective_tile, export_onnx, month_of, onnx_max_abs_diff,
                          train, window_of)

    if args.threads < 1 or args.epochs < 1 or args.batch_size < 1 or args.patch < 4:
        raise InputError("--threads, --epochs and --batch-size must be ≥ 1 and --patch ≥ 4")
    torch.set_num_threads(args.threads)
    dataset = patches.read(args.patches)
    if dataset.fine is None:
        raise InputError(f"{args.patches}: --arch asunet trains on dated annotations on a finer grid (fine.npy); "
                         f"this dataset has none")
    try:
        build(1, 2, 1, [0.0], [1.0], args.hyperparameters)
    except (ValueError, TypeError) as e:
        raise InputError(f"--hyperparameters: {e}") from None
    t_count, b = len(dataset.dates), len(dataset.bands)
    c, h, w = dataset.image.shape
    codes = [cl.code for cl in dataset.classes]
    annotations = _indices(dataset.fine, codes)
    # Date-major `[T, B, H, W]` whatever order the raster's channels are in (a features
    # stage writes each band's dates together).
    image, order = _series(dataset, args)
    data = SeriesData(image=image, dates=dataset.dates,
                      bands=dataset.bands, annotations=annotations, annotation_dates=dataset.fine_dates,
                      scale=dataset.fine_scale, classes=dataset.classes)
    hp = {**default_hyperparameters(), **args.hyperparameters}
    test_dates = [d for d in (args.test_dates or "").split(",") if d]
    unknown = set(test_dates) - set(dataset.fine_dates)
    if unknown:
        raise InputError(f"--test-dates {sorted(unknown)} are not annotation dates ({', '.join(dataset.fine_dates)})")
    log(f"{args.patches}: {h} × {w} px, {t_count} dates × {b} bands, {len(dataset.fine_dates)} annotations on a "
        f"{dataset.fine_scale}× finer grid; training {ARCH} (λ = {args.smoothness})")
    emit({"event": "start", "arch": ARCH, "height": h, "width": w, "dates": t_count, "bands": b,
          "annotations": len(dataset.fine_dates), "scale": dataset.fine_scale, "seed": args.seed})

    def config(smoothness: float) -> SrConfig:
        return SrConfig(seed=args.seed, epochs=args.epochs, patches_per_epoch=args.patches_per_epoch,
                        batch_size=args.batch_size, patch=args.patch, learning_rate=args.learning_rate,
                        smoothness=smoothness, valid_days=args.valid_days, patience=args.patience,
                        split=args.split, test_dates=test_dates, hyperparameters=args.hyperparameters)

    started = time.perf_counter()
    result = train(data, config(args.smoothness), emit)
    seconds = time.perf_counter() - started
    log("evaluating the maps of every date")
    evaluation = _evaluate(result, data, args, log)
    report = {"arch": ARCH, "evaluated_on": "test blocks of the training dates, and the left-out dates",
              "smoothness": args.smoothness, "valid_days": args.valid_days, "split": args.split,
              "test_dates": test_dates, "per_date": evaluation["per_date"],
              "consistency": evaluation["consistency"], "seconds": round(seconds, 2)}
    if args.ablation:
        log("the ablation: the same network with λ = 0")
        plain = train(data, config(0.0), lambda e: None)
        plain_eval = _evaluate(plain, data, args, log)
        report["ablation"] = {"smoothness": [args.smoothness, 0.0], "rows": [
            {"smoothness": args.smoothness, "per_date": evaluation["per_date"],
             "consistency": evaluation["consistency"]},
            {"smoothness": 0.0, "per_date": plain_eval["per_date"], "consistency": plain_eval["consistency"]}]}
    baseline_labels = None
    if args.baseline and data.scale > 1:
        log("the baseline: the same network at 10 m on the annotations' majorities")
        coarse = SeriesData(image=data.image, dates=data.dates, bands=data.bands,
                            annotations=majority(annotations, data.scale, len(codes)),
                            annotation_dates=data.annotation_dates, scale=1, classes=data.classes)
        base = train(coarse, config(args.smoothness), lambda e: None)
        from .sen2vhr import predict_decode

        baseline_labels, _ = predict_decode(base.model, data.image, data.dates, args.tile, args.overlap)
    if data.scale > 1:
        report["mixed_pixels"] = _mixed_pixels(data, evaluation, baseline_labels, result.roles,
                                               result.test_annotations)
        log(f"mixed 10 m pixels: {report['mixed_pixels']['accuracy']}")

    model = result.model
    k = len(codes)
    checkpoint = {"arch": ARCH, "bands": b, "classes": k, "scale": data.scale, "hyperparameters": hp,
                  "mean": result.mean.tolist(), "std": result.std.tolist()}
    sidecar = {
        "contract": SIDECAR_CONTRACT,
        "arch": ARCH,
        "hyperparameters": hp,
        "parameters": sum(p.numel() for p in model.parameters()),
        "input": {
            "name": INPUT_NAME, "dtype": "float32", "shape": ["N", hp["window"] * b, "H", "W"],
            "layout": "N×C×H×W", "channels": order, "bands": dataset.bands, "dates": dataset.dates,
            "window": hp["window"], "multiple": model.net.multiple,
            "missing": "NaN (a validity channel per date; 0 after normalisation)",
            "month": {"name": MONTH_NAME, "dtype": "float32", "shape": ["N"], "meaning": "the target date's month, 1–12"},
        },
        "output": {
            "name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", k * k, f"H×{data.scale}", f"W×{data.scale}"],
            "kind": "transition probabilities: channel i·K + j is class i at the previous date → class j",
            "scale": data.scale,
            "classes": [{"code": cl.code, "name": cl.name} for cl in dataset.classes],
        },
        "tiling": {"tile": args.tile, "overlap": args.overlap, "blend": "centre crop"},
        "normalisation": {"mean": result.mean.tolist(), "std": result.std.tolist(), "in_graph": True},
        "opset": export.OPSET,
        "training_data_sha256": {name: sha256_file(args.patches / name)
                                 for name in ("dataset.json", "image.npy", "fine.npy")},
        "seed": args.seed,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "training": {"loss": "−log p({c → c} ∪ {b → c}) on labelled fine pixels whose HR date is valid (c the "
                             "annotation's class, b the earlier annotation's), + λ · KL(p_t ‖ p_t+1) on every pixel", "smoothness": args.smoothness, "valid_days": args.valid_days,
                     "epochs_run": len(result.history), "best_epoch": result.best_epoch,
                     "patch": args.patch, "batch_size": args.batch_size, "seconds": round(seconds, 2),
                     "batch_norm": f"statistics re-estimated after training with the kept weights, on "
                                   f"{max(1, args.patches_per_epoch // args.batch_size)} batches of training windows",
                     "annotation_dates": dataset.fine_dates, "split": args.split, "test_dates": test_dates},
        "onnx_check": None,  # filled in by publish
    }
    if args.note:
        sidecar["note"] = args.note
    side = effective_tile(args.tile, args.overlap, h, w, model.net.multiple)
    x = np.stack([window_of(data.image, t, hp["window"], 0, 0, side) for t in (1, t_count - 1)]).astype(np.float32)
    months = np.array([month_of(data.dates[t]) for t in (1, t_count - 1)], np.float32)
    out: Path = args.out
    publish(out,
            checkpoint=lambda path: torch.save({"config": checkpoint, "state_dict": model.state_dict()}, str(path)),
            graphs=[Graph("model.onnx", export=lambda path: export_onnx(model, path, export.OPSET),
                          check=lambda path: onnx_max_abs_diff(path, model, x, months))],
            metrics=report, sidecar=sidecar, write_json=write_json)
    emit({"event": "done", "model": str((out / "model.onnx").resolve())})
    return 0
