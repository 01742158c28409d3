"""`train --arch fg-unet --patches DIR`, `predict --patches`, `bench --patches`: the
segmentation side of the file contract (same events, exit codes and output files as the
temporal recipes; the sidecar's `input.layout` is `N×C×H×W`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

SIDECAR_CONTRACT = "sitsflow-model/1"


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def train_segmentation_command(args, emit, log, write_json) -> int:
    from . import patches
    from .data import InputError, sha256_file

    if not isinstance(args.hyperparameters, dict):
        raise InputError("--hyperparameters must be a JSON object")
    if args.threads < 1 or args.epochs < 1 or args.patience < 1 or args.batch_size < 1 or args.patch < 8:
        raise InputError("--threads, --epochs, --patience and --batch-size must be ≥ 1 and --patch ≥ 8")
    if args.overlap < 0 or args.tile <= 2 * args.overlap:
        raise InputError(f"--tile {args.tile} must be larger than twice --overlap {args.overlap}")
    dataset = patches.read(args.patches)
    import torch

    from . import export
    from .publish import Graph, publish
    from .train import leave_process_group
    from .segmentation import (ARCH, VHR_INPUT_NAME, SegmentationConfig, build, default_hyperparameters, export_onnx,
                               onnxruntime_max_abs_diff, save_checkpoint, train_segmentation)

    torch.set_num_threads(args.threads)
    try:
        build(1, 2, [0.0], [1.0], args.hyperparameters)
    except (ValueError, TypeError) as e:
        raise InputError(f"--hyperparameters: {e}") from None
    hp = {**default_hyperparameters(), **args.hyperparameters}
    multiple = 2 ** hp["depth"]
    encoder = None
    if args.encoder is not None:
        from .ssl import load_encoder

        encoder = load_encoder(args.encoder)
        pretrained = encoder[0]["hyperparameters"]
        # The network takes the encoder's shape unless the caller says otherwise (then
        # a mismatch is an error naming both).
        hp = {**hp, "width": pretrained["width"], "depth": pretrained["depth"], **args.hyperparameters}
        args.hyperparameters = {**args.hyperparameters, "width": hp["width"], "depth": hp["depth"]}
        multiple = 2 ** hp["depth"]
    for name, value in (("--tile", args.tile), ("--overlap", args.overlap), ("--patch", args.patch)):
        if value % multiple:
            raise InputError(f"{name} {value} is not a multiple of {multiple} (2^depth: the poolings must "
                             f"line up from tile to tile)")
    c, h, w = dataset.image.shape
    rank = _rank()
    if rank == 0:
        log(f"{args.patches}: {h} × {w} px, {len(dataset.dates)} dates × {len(dataset.bands)} bands = {c} channels, "
            f"{int((np.asarray(dataset.labels) > 0).sum())} labelled px; training {ARCH}")
        emit({"event": "start", "arch": ARCH, "height": h, "width": w, "channels": c,
              "labelled_pixels": int((np.asarray(dataset.labels) > 0).sum()), "seed": args.seed})
    budgets = sorted(set(args.budgets or [1.0]))
    if any(not 0 < b <= 1 for b in budgets):
        raise InputError(f"--budgets {budgets}: each is a share of the labelled pixels in (0, 1]")
    # The series-only network from scratch is every table's baseline; beside it the same
    # network from the pretrained encoder, and the fusion network when there is a VHR image.
    inits = ["supervised"] + (["ssl"] if encoder is not None else []) + (["fusion"] if dataset.vhr is not None else [])
    if dataset.vhr is not None and rank == 0:
        log(f"{args.patches}: VHR image of {len(dataset.vhr_channels)} channels on a {dataset.vhr_scale}× finer grid; "
            f"training the fusion network beside the series-only one")
    table, runs = [], len(budgets) * len(inits)
    started = time.perf_counter()
    for b in budgets:
        row = {"budget": b}
        for init in inits:
            config = SegmentationConfig(seed=args.seed, epochs=args.epochs, patches_per_epoch=args.patches_per_epoch,
                                        batch_size=args.batch_size, patch=args.patch, patience=args.patience,
                                        learning_rate=args.learning_rate, tile=args.tile, overlap=args.overlap,
                                        hyperparameters=args.hyperparameters, budget=b, normalise=args.normalise)
            if runs > 1 and rank == 0:
                log(f"{init} at {b:.0%} of the labelled pixels")
                emit({"event": "run", "init": init, "budget": b})
            result = train_segmentation(dataset, config, emit, encoder if init == "ssl" else None,
                                        fusion=init == "fusion")
            if rank != 0:
                continue
            report, evaluated_on = _assess(result, dataset, args.tile, args.overlap, log)
            row[init] = {key: report[key] for key in ("overall_accuracy", "kappa", "miou", "samples")}
            row[init]["iou"] = _ious(report)
            row["fit_pixels"] = result.split["fit_pixels"]
            row["validation_pixels"] = result.split["validation_pixels"]
            row["evaluated_on"] = evaluated_on
            log(f"{init} at {b:.0%} ({result.split['fit_pixels']} px): OA {report['overall_accuracy']:.4f}, "
                f"mIoU {report['miou']:.4f}")
        table.append(row)
    seconds = time.perf_counter() - started
    leave_process_group()
    if rank != 0:
        return 0
    segmenter = result.segmenter
    if runs > 1:
        report["label_budgets"] = {"rule": "a seeded share of each class's fitting and early-stopping pixels (at "
                                           "least one each); the same split and test pixels at every budget",
                                   "pretrained": None if encoder is None else str(args.encoder),
                                   "inits": inits,
                                   "vhr": None if dataset.vhr is None else {
                                       "channels": dataset.vhr_channels, "scale": dataset.vhr_scale,
                                       "source": json.loads((args.patches / "dataset.json").read_text())["vhr"].get(
                                           "source")},
                                   "table": table}
    log(f"{evaluated_on}: OA {report['overall_accuracy']:.4f}, kappa {report['kappa']:.4f} "
        f"({report['samples']} px, {seconds:.1f} s training on {result.world_size} process(es))")

    k = len(result.classes)
    fusion = segmenter.fusion
    if fusion:
        from .segmentation import fusion_hyperparameters

        hp = {**hp, **fusion_hyperparameters(), **args.hyperparameters}
    vhr_input = None
    if fusion:
        vhr_input = {"channels": len(dataset.vhr_channels), "scale": dataset.vhr_scale,
                     "mean": segmenter.normalise_vhr.mean.reshape(-1).tolist(),
                     "std": segmenter.normalise_vhr.std.reshape(-1).tolist()}
    checkpoint = {"arch": ARCH, "channels": c, "classes": k, "hyperparameters": hp, "mean": result.mean.tolist(),
                  "std": result.std.tolist(), "vhr": vhr_input}
    sidecar = {
        "contract": SIDECAR_CONTRACT,
        "arch": ARCH,
        "hyperparameters": hp,
        "parameters": sum(p.numel() for p in segmenter.parameters()),
        "input": {
            "name": export.INPUT_NAME,
            "dtype": "float32",
            "shape": ["N", c, "H", "W"],
            "layout": "N×C×H×W",
            "channels": dataset.channels,
            "bands": dataset.bands,
            "dates": dataset.dates,
            "missing": "NaN (replaced by the channel mean inside the graph)",
            "multiple": multiple,
            "vhr": None if not fusion else {
                "name": VHR_INPUT_NAME,
                "dtype": "float32",
                "shape": ["N", len(dataset.vhr_channels), f"H×{dataset.vhr_scale}", f"W×{dataset.vhr_scale}"],
                "channels": dataset.vhr_channels,
                "scale": dataset.vhr_scale,
                "tile": "the series tile's pixels, each its scale × scale block, mirrored by whole series pixels",
                "normalisation": {"mean": vhr_input["mean"], "std": vhr_input["std"], "in_graph": True},
            },
        },
        "output": {
            "name": export.OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["N", k, "H", "W"],
            "kind": "softmax probabilities",
            "classes": [{"code": cl.code, "name": cl.name} for cl in result.classes],
        },
        "tiling": {"tile": args.tile, "overlap": args.overlap, "blend": "centre crop"},
        "normalisation": {"mean": result.mean.tolist(), "std": result.std.tolist(), "in_graph": True,
                          "statistics": ("per channel over the training scene (NaN ignored)" if args.normalise == "channel"
                                         else "per band over the training scene and all its dates (NaN ignored)")},
        "opset": export.OPSET,
        "exporter": "torch.onnx.export (TorchScript)",
        "training_data_sha256": {name: sha256_file(args.patches / name)
                                 for name in ("dataset.json", "image.npy", "labels.npy", "groups.npy")},
        "seed": args.seed,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "training": {
            "pixels": {"fit": result.split["fit_pixels"], "validation": result.split["validation_pixels"],
                       "test": result.split["test_pixels"]},
            "split": result.split,
            "patch": args.patch,
            "patches_per_epoch": args.patches_per_epoch,
            "patch_sampling": "a class uniformly at random, then one of its training pixels at the centre",
            "augmentation": "flips and 90° rotations (the 8 symmetries of the square)",
            "processes": result.world_size,
            "epochs_cap": args.epochs,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "patience": args.patience,
            "loss": "cross-entropy weighted by inverse class frequency, unlabelled pixels ignored",
            "pretrained_encoder": None if encoder is None else {
                "checkpoint": str(args.encoder), "arch": encoder[0]["arch"],
                "views_sha256": encoder[0].get("views_sha256"), "loaded": "normalisation, down blocks, bottom"},
            "label_budget": max(budgets),
            "class_weights": result.class_weights.tolist(),
            "seconds": round(seconds, 2),
        },
        "onnx_check": None,  # filled in by publish
        "metrics": {key: report[key] for key in ("evaluated_on", "samples", "overall_accuracy", "kappa", "macro_f1",
                                                 "miou")},
    }
    if args.note:
        sidecar["note"] = args.note
    # Checked on real tiles of the scene, NaNs included.
    side = min(args.tile, -(-max(h, w) // multiple) * multiple)
    from .segmentation import _vhr_window, _window

    check_tiles = np.stack([_window(np.asarray(dataset.image), 0, 0, side)]).astype(np.float32)
    vhr_tiles = None
    if fusion:
        vhr_tiles = np.stack([_vhr_window(dataset.vhr, 0, 0, side, dataset.vhr_scale)]).astype(np.float32)
    out: Path = args.out
    publish(out, checkpoint=lambda path: save_checkpoint(path, segmenter, checkpoint),
            graphs=[Graph("model.onnx",
                          export=lambda path: export_onnx(segmenter, c, path, export.OPSET, export.INPUT_NAME,
                                                          export.OUTPUT_NAME),
                          check=lambda path: onnxruntime_max_abs_diff(path, segmenter, check_tiles, vhr_tiles),
                          checked={"tiles": int(len(check_tiles)), "side": side})],
            metrics=report, sidecar=sidecar, write_json=write_json)
    emit({"event": "done", "model": str((out / "model.onnx").resolve()),
          "overall_accuracy": report["overall_accuracy"], "kappa": report["kappa"]})
    return 0


def init_segmentation_command(args, emit, write_json) -> int:
    """An untrained FG-UNet (seeded weights, the dataset's channel statistics) exported
    with the sidecar a trained one has: what the inference benchmark times."""
    import torch

    from . import export, patches
    from .segmentation import build, channel_statistics, default_hyperparameters, export_onnx, save_checkpoint

    dataset = patches.read(args.patches)
    torch.manual_seed(args.seed)
    c = len(dataset.channels)
    mean, std = channel_statistics(dataset.image, np.random.default_rng(args.seed), max_pixels=1 << 16)
    hp = {**default_hyperparameters(), **args.hyperparameters}
    segmenter = build(c, args.classes, mean, std, hp).eval()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", segmenter, {"arch": "fg-unet", "channels": c, "classes": args.classes,
                                                  "hyperparameters": hp, "mean": mean.tolist(), "std": std.tolist()})
    export_onnx(segmenter, c, out / "model.onnx", export.OPSET, export.INPUT_NAME, export.OUTPUT_NAME)
    sidecar = {
        "contract": SIDECAR_CONTRACT, "arch": "fg-unet", "hyperparameters": hp, "untrained": True,
        "parameters": sum(p.numel() for p in segmenter.parameters()),
        "input": {"name": export.INPUT_NAME, "dtype": "float32", "shape": ["N", c, "H", "W"], "layout": "N×C×H×W",
                  "channels": dataset.channels, "bands": dataset.bands, "dates": dataset.dates,
                  "multiple": 2 ** hp["depth"]},
        "output": {"name": export.OUTPUT_NAME, "dtype": "float32", "shape": ["N", args.classes, "H", "W"],
                   "classes": [{"code": k + 1, "name": f"class {k + 1}"} for k in range(args.classes)]},
        "tiling": {"tile": args.tile, "overlap": args.overlap, "blend": "centre crop"},
        "normalisation": {"mean": mean.tolist(), "std": std.tolist(), "in_graph": True},
        "opset": export.OPSET,
    }
    write_json(out / "model.json", sidecar)
    emit({"event": "done", "model": str((out / "model.onnx").resolve()), "parameters": sidecar["parameters"]})
    return 0


def _assess(result, dataset, tile: int, overlap: int, log) -> tuple[dict, str]:
    """The metrics of a trained network on its test pixels (else validation, else
    training), read off the scene predicted by tiles as the host will."""
    from . import metrics
    from .segmentation import predict_scene

    probabilities = predict_scene(result.segmenter, np.asarray(dataset.image), tile, overlap, vhr=dataset.vhr)
    predicted = probabilities.argmax(0)
    if (result.test_targets >= 0).any():
        evaluated_on, reference = "test", result.test_targets
    elif (result.validation_targets >= 0).any():
        evaluated_on, reference = "validation", result.validation_targets
    else:
        log("warning: no test or validation polygon: metrics are on the training pixels and are optimistic")
        evaluated_on, reference = "training", result.fit_targets
    keep = reference >= 0
    report = metrics.report(reference[keep], predicted[keep], result.classes, evaluated_on)
    report["miou"] = _miou(report)
    report["iou"] = _ious(report)
    return report, evaluated_on


def _ious(report: dict) -> dict:
    """IoU per class name (None for a class neither predicted nor present)."""
    counts = np.array(report["confusion_matrix"]["counts"], dtype=np.float64)
    names = [c["name"] for c in report["classes"]]
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    return {str(name): (float(tp[i] / union[i]) if union[i] > 0 else None) for i, name in enumerate(names)}


def _miou(report: dict) -> float | None:
    """Mean intersection over union: TP / (TP + FP + FN) per class, from the confusion."""
    counts = np.array(report["confusion_matrix"]["counts"], dtype=np.float64)
    if counts.size == 0:
        return None
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    ious = tp[union > 0] / union[union > 0]
    return float(ious.mean()) if len(ious) else None


def _load(model: Path):
    from .data import InputError
    from .segmentation import load_checkpoint

    sidecar_path, checkpoint = model.parent / "model.json", model.parent / "model.pt"
    for f in (sidecar_path, checkpoint):
        if not f.is_file():
            raise InputError(f"{f}: missing (predict and bench run the PyTorch model saved beside model.onnx)")
    sidecar = json.loads(sidecar_path.read_text())
    if sidecar.get("arch") != "fg-unet":
        raise InputError(f"{sidecar_path}: arch {sidecar.get('arch')!r} does not segment; --patches is for fg-unet")
    segmenter, _ = load_checkpoint(checkpoint)
    return segmenter, sidecar


def _matching(patches_dir: Path, sidecar: dict):
    from . import patches
    from .data import InputError

    dataset = patches.read(patches_dir)
    if dataset.channels != sidecar["input"]["channels"]:
        raise InputError(f"{patches_dir}: channels differ from the model's ({len(dataset.channels)} against "
                         f"{len(sidecar['input']['channels'])})")
    return dataset


def predict_segmentation_command(args, emit, log) -> int:
    from .export import replace_atomically
    from .segmentation import predict_scene

    segmenter, sidecar = _load(args.model)
    dataset = _matching(args.patches, sidecar)
    tile = args.tile or sidecar["tiling"]["tile"]
    overlap = sidecar["tiling"]["overlap"] if args.overlap is None else args.overlap
    probabilities = predict_scene(segmenter, np.asarray(dataset.image), tile, overlap, vhr=dataset.vhr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npy")
    np.save(tmp, probabilities)
    replace_atomically(tmp, args.out)
    log(f"{args.out}: probabilities {list(probabilities.shape)} (tile {tile}, overlap {overlap})")
    emit({"event": "done", "probabilities": str(args.out.resolve()), "shape": list(probabilities.shape)})
    return 0


def bench_segmentation_command(args, emit) -> int:
    import torch

    from .segmentation import predict_scene

    segmenter, sidecar = _load(args.model)
    dataset = _matching(args.patches, sidecar)
    image = np.asarray(dataset.image)
    tile = args.tile or sidecar["tiling"]["tile"]
    overlap = sidecar["tiling"]["overlap"] if args.overlap is None else args.overlap
    predict_scene(segmenter, image, tile, overlap, vhr=dataset.vhr)  # warm-up
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        predict_scene(segmenter, image, tile, overlap, vhr=dataset.vhr)
        times.append(time.perf_counter() - started)
    pixels = image.shape[1] * image.shape[2]
    median = float(np.median(times))
    emit({"event": "bench", "arch": "fg-unet", "pixels": pixels, "tile": tile, "overlap": overlap,
          "repeat": args.repeat, "threads": torch.get_num_threads(), "torch_version": torch.__version__,
          "seconds_median": median, "seconds_best": min(times), "pixels_per_s": pixels / median})
    return 0
