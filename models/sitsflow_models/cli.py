"""`python -m sitsflow_models`: the versioned file contract the Rust host drives.

stdout carries only JSON lines (progress events, the bench result); human messages go
to stderr. Exit codes: 0 success, 2 bad input or usage (missing column, unknown class,
unsupported contract version …), 1 an unexpected failure. On failure the last stdout
line is `{"event": "error", "message": …}`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

#: Contract versions this package implements (`--contract N`).
CONTRACTS = (1,)
SIDECAR_CONTRACT = "sitsflow-model/1"


def emit(event: dict) -> None:
    print(json.dumps(_finite(event), allow_nan=False, default=_json_default), flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _finite(value):
    """JSON has no NaN: undefined metrics (e.g. kappa of one class) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _write_json(path: Path, document: dict) -> None:
    from .export import replace_atomically

    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(_finite(document), indent=2, allow_nan=False, ensure_ascii=False, default=_json_default)
    tmp.write_text(text + "\n", encoding="utf-8")
    replace_atomically(tmp, path)


class _Parser(argparse.ArgumentParser):
    """Usage errors follow the contract too: a JSON error line on stdout, exit code 2."""

    def error(self, message):
        emit({"event": "error", "message": f"usage: {message}"})
        super().error(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sitsflow_models",
                                description="Train TempCNN / LSTM / L-TAE pixel classifiers and export them to ONNX.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model on a samples CSV and export it to OUTDIR")
    t.add_argument("--contract", type=int, required=True,
                   help=f"file-contract version the caller expects (supported: {', '.join(map(str, CONTRACTS))})")
    t.add_argument("--samples", type=Path, help="training samples CSV (wide BAND@DATE convention; tempcnn, lstm, ltae)")
    t.add_argument("--patches", type=Path,
                   help="patch dataset folder (sitsflow-patches/1: image.npy, labels.npy, groups.npy, dataset.json; fg-unet)")
    t.add_argument("--test", type=Path, help="test samples CSV; metrics.json is computed on it (else on validation)")
    t.add_argument("--missing", choices=("error", "keep"), default="error",
                   help="missing values (empty cells, nan) in the samples: an error naming the cell (default), or NaN "
                        "for the network (replaced by the band mean in the graph)")
    t.add_argument("--arch", choices=("tempcnn", "lstm", "ltae", "fg-unet", "asunet"), required=True)
    t.add_argument("--out", type=Path, required=True, help="output directory (created)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epochs", type=int, default=100, help="epoch cap (early stopping usually ends sooner)")
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--patience", type=int, default=10, help="epochs without a better validation loss")
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--classes", type=Path, help="nomenclature CSV code,name,color (else names sorted → 1..C)")
    t.add_argument("--hyperparameters", type=json.loads, default={},
                   help='JSON object overriding the architecture defaults, e.g. \'{"filters": 32}\'')
    t.add_argument("--drop-dates", type=float, default=0.0,
                   help="tempcnn, lstm, ltae: time augmentation, share of each training sample's dates set missing "
                        "in each batch (default 0)")
    t.add_argument("--shift-dates", type=int, default=0,
                   help="tempcnn, lstm, ltae: time augmentation, each training sample shifted by up to this many dates "
                        "either way, the dates shifted in missing (default 0)")
    t.add_argument("--threads", type=int, default=1,
                   help="CPU threads; fixed (default 1) so a seed gives the same weights on any machine")
    t.add_argument("--note", default=None, help="free text stored in model.json (e.g. how to apply the model)")
    t.add_argument("--patch", type=int, default=64, help="fg-unet: side of the training patches drawn on the fly")
    t.add_argument("--patches-per-epoch", type=int, default=256, help="fg-unet: patches drawn per epoch (all ranks)")
    t.add_argument("--normalise", choices=("channel", "band"), default="channel",
                   help="fg-unet: standardise each BAND@DATE channel with its own statistics (channel, the seed's) or "
                        "with its band's pooled over the dates (band: another year's shifted season stays in range)")
    t.add_argument("--tile", type=int, default=512, help="fg-unet: inference tile side (recorded in the sidecar)")
    t.add_argument("--overlap", type=int, default=16, help="fg-unet: inference overlap on each side of a tile")
    t.add_argument("--encoder", type=Path,
                   help="fg-unet: start from this SimCLR encoder (`pretrain`'s model.pt) and also train the same network "
                        "from scratch at each --budgets share, for the comparison table in metrics.json")
    t.add_argument("--budgets", type=lambda v: [float(x) for x in v.split(",")],
                   help="fg-unet: label budgets, shares of the labelled pixels, e.g. 0.01,0.1,1 (default 1)")
    t.add_argument("--smoothness", type=float, default=0.1,
                   help="asunet: λ of the temporal smoothness term (KL between consecutive dates' transitions)")
    t.add_argument("--valid-days", type=int, default=5,
                   help="asunet: an annotation is the target of HR dates at most this many days away (the seed's 5)")
    t.add_argument("--split", choices=("random", "time"), default="random",
                   help="asunet: test on spatial blocks of every annotation (random), or only on --test-dates (time)")
    t.add_argument("--test-dates", help="asunet: annotation dates left out of training, comma-separated")
    t.add_argument("--ablation", action="store_true", help="asunet: also train with λ = 0, for the ablation table")
    t.add_argument("--baseline", action="store_true",
                   help="asunet: also train the network at 10 m, whose nearest-upsampled maps are the mixed pixels' "
                        "baseline")
    s = sub.add_parser("pretrain", help="SimCLR pretraining of the FG-UNet encoder on a sitsflow-views/1 stream")
    s.add_argument("--contract", type=int, required=True)
    s.add_argument("--arch", choices=("simclr",), required=True)
    s.add_argument("--views", required=True, help="the views stream: a file, or - for standard input")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature τ (the seed used 0.1 and 0.7)")
    s.add_argument("--learning-rate", type=float, default=1e-3, help="SGD learning rate (the seed's 0.001)")
    s.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    s.add_argument("--projection-dim", type=int, default=64, help="output size of the 2-layer projection head")
    s.add_argument("--hyperparameters", type=json.loads, default={},
                   help='the encoder\'s FG-UNet shape, e.g. \'{"width": 32, "depth": 2}\'')
    s.add_argument("--threads", type=int, default=1)
    pr = sub.add_parser("predict", help="class probabilities of the PyTorch model (reference for ONNX inference)")
    pr.add_argument("--model", type=Path, required=True, help="OUTDIR/model.onnx (model.pt and model.json beside it)")
    pr.add_argument("--samples", type=Path, help="samples CSV (tempcnn, lstm, ltae)")
    pr.add_argument("--patches", type=Path, help="patch dataset whose whole scene is predicted by tiles (fg-unet)")
    pr.add_argument("--tile", type=int, help="fg-unet: tile side (default: the sidecar's)")
    pr.add_argument("--overlap", type=int, help="fg-unet: overlap (default: the sidecar's)")
    pr.add_argument("--out", type=Path, required=True, help="probabilities CSV (fg-unet: .npy [K, H, W])")
    i = sub.add_parser("init", help="an untrained fg-unet with its sidecar (benchmarks: speed does not depend on the weights)")
    i.add_argument("--patches", type=Path, required=True, help="patch dataset whose channels the network takes")
    i.add_argument("--classes", type=int, default=6, help="output classes")
    i.add_argument("--out", type=Path, required=True)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--tile", type=int, default=512)
    i.add_argument("--overlap", type=int, default=16)
    i.add_argument("--hyperparameters", type=json.loads, default={})
    b = sub.add_parser("bench", help="PyTorch CPU inference throughput, as JSON on stdout")
    b.add_argument("--model", type=Path, required=True)
    b.add_argument("--samples", type=Path, help="samples CSV (tempcnn, lstm, ltae)")
    b.add_argument("--patches", type=Path, help="patch dataset: its scene is predicted by tiles (fg-unet)")
    b.add_argument("--tile", type=int, help="fg-unet: tile side (default: the sidecar's)")
    b.add_argument("--overlap", type=int, help="fg-unet: overlap (default: the sidecar's)")
    b.add_argument("--repeat", type=int, default=5)
    b.add_argument("--batch-size", type=int, default=4096)
    b.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default, one per core)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .data import InputError

    try:
        if args.command == "train":
            return cmd_train(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "pretrain":
            from .ssl import pretrain_command

            return pretrain_command(args, emit, log, _write_json, CONTRACTS)
        if args.command == "init":
            from .segment_cli import init_segmentation_command

            return init_segmentation_command(args, emit, _write_json)
        return cmd_bench(args)
    except InputError as e:
        log(f"error: {e}")
        emit({"event": "error", "message": str(e)})
        return 2
    except Exception as e:  # noqa: BLE001 — the host needs a JSON line and an exit code, whatever broke
        traceback.print_exc()
        emit({"event": "error", "message": f"{type(e).__name__}: {e}"})
        return 1


def cmd_train(args) -> int:
    from .data import InputError, encode_labels, model_classes, names_for_codes, read_classes, read_samples, sha256_file

    if args.contract not in CONTRACTS:
        raise InputError(f"contract version {args.contract} is not supported by this sitsflow_models "
                         f"(supported: {', '.join(map(str, CONTRACTS))})")
    if args.arch == "fg-unet":
        if args.patches is None or args.samples is not None or args.test is not None:
            raise InputError("--arch fg-unet trains on --patches DIR (a patch dataset), not on --samples/--test")
        from .segment_cli import train_segmentation_command

        return train_segmentation_command(args, emit, log, _write_json)
    if args.arch == "asunet":
        if args.patches is None or args.samples is not None or args.test is not None:
            raise InputError("--arch asunet trains on --patches DIR (a patch dataset with fine.npy), not on --samples")
        from .sr_cli import train_sr_command

        return train_sr_command(args, emit, log, _write_json)
    if args.samples is None or args.patches is not None:
        raise InputError(f"--arch {args.arch} trains on --samples CSV (--patches is for fg-unet)")
    if not isinstance(args.hyperparameters, dict):
        raise InputError("--hyperparameters must be a JSON object")
    if args.threads < 1 or args.epochs < 1 or args.patience < 1 or args.batch_size < 2:
        raise InputError("--threads, --epochs and --patience must be ≥ 1 and --batch-size ≥ 2")
    nomenclature = read_classes(args.classes) if args.classes else None
    samples = read_samples(args.samples, missing=args.missing)
    names_for_codes(samples, nomenclature)
    classes = model_classes(samples, nomenclature)
    if len(classes) < 2:
        raise InputError(f"{args.samples}: at least two classes are needed, found {len(classes)}")
    targets = encode_labels(samples, classes, nomenclature)
    test = None
    if args.test:
        test = read_samples(args.test, missing=args.missing)
        names_for_codes(test, nomenclature)
        if test.bands != samples.bands or len(test.dates) != len(samples.dates):
            raise InputError(f"{args.test}: bands {test.bands} × {len(test.dates)} dates differ from the training "
                             f"samples' {samples.bands} × {len(samples.dates)} dates")
        test_targets = encode_labels(test, classes, nomenclature)
    # torch is imported once the inputs are known to be good: it takes seconds to load.
    import torch

    from . import export, metrics, nets
    from .publish import Graph, publish
    from .train import SMALL_CLASS, TrainConfig, leave_process_group, predict_logits, small_classes, train

    # Float reductions split across threads sum in a thread-count-dependent order.
    torch.set_num_threads(args.threads)

    try:
        nets.build(args.arch, 1, 1, 1, [0.0], [1.0], args.hyperparameters)
    except (ValueError, TypeError) as e:
        raise InputError(f"--hyperparameters: {e}") from None
    n, dates, bands = samples.cube.shape
    if int(os.environ.get("RANK", "0")) == 0:
        log(f"{args.samples}: {n} samples, {dates} dates × {bands} bands, {len(classes)} classes; training {args.arch}")
        emit({"event": "start", "arch": args.arch, "samples": n, "dates": dates, "bands": bands,
              "classes": len(classes), "seed": args.seed})
    small = small_classes(targets, len(classes))
    if small and int(os.environ.get("RANK", "0")) == 0:
        listed = ", ".join(f"{classes[c].name} {n}" for c, n in small)
        log(f"warning: classes with fewer than {SMALL_CLASS} samples are hard to learn (their loss weight is capped): "
            f"{listed}")
    config = TrainConfig(arch=args.arch, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                         patience=args.patience, learning_rate=args.learning_rate,
                         drop_dates=args.drop_dates, shift_dates=args.shift_dates,
                         hyperparameters=args.hyperparameters)
    started = time.perf_counter()
    result = train(samples.cube, targets, samples.groups, samples.bands, len(classes), config, emit, samples.dates)
    train_seconds = time.perf_counter() - started
    classifier = result.classifier
    leave_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun rank 0 writes the model; the others hold the same weights

    if test is not None:
        evaluated_on, eval_cube, eval_targets = "test", test.cube, test_targets
    elif len(result.validation_index):
        evaluated_on = "validation"
        eval_cube, eval_targets = samples.cube[result.validation_index], targets[result.validation_index]
    else:
        log("warning: no test set and too few groups per class for a validation split: "
            "metrics are on the training set and are optimistic")
        evaluated_on, eval_cube, eval_targets = "training", samples.cube, targets
    predicted = predict_logits(classifier, eval_cube).argmax(1).numpy()
    report = metrics.report(eval_targets, predicted, classes, evaluated_on)
    log(f"{evaluated_on}: OA {report['overall_accuracy']:.4f}, kappa {report['kappa']:.4f} "
        f"({report['samples']} samples, {train_seconds:.1f} s training)")

    hyperparameters = {**nets.default_hyperparameters(args.arch), **args.hyperparameters}
    checkpoint_config = {"arch": args.arch, "bands": bands, "dates": dates, "classes": len(classes),
                         "hyperparameters": hyperparameters, "mean": result.mean.tolist(),
                         "std": result.std.tolist(), "positions": nets.day_positions(samples.dates, dates)}
    validation = (f"{config.validation_fraction:.0%} of each class's groups (`group` column)"
                  if samples.groups is not None else f"{config.validation_fraction:.0%} of each class's rows")
    sidecar = {
        "contract": SIDECAR_CONTRACT,
        "arch": args.arch,
        "hyperparameters": hyperparameters,
        "parameters": sum(p.numel() for p in classifier.parameters()),
        "input": {
            "name": export.INPUT_NAME,
            "dtype": "float32",
            "shape": ["N", dates, bands],
            "layout": "N×T×B",
            "bands": samples.bands,
            "dates": samples.dates,
            "missing": "NaN (replaced by the band mean inside the graph)",
        },
        "output": {
            "name": export.OUTPUT_NAME,
            "dtype": "float32",
            "shape": ["N", len(classes)],
            "kind": "softmax probabilities",
            "classes": [{"code": c.code, "name": c.name} for c in classes],
        },
        "normalisation": {"mean": result.mean.tolist(), "std": result.std.tolist(), "in_graph": True},
        "opset": export.OPSET,
        "exporter": "torch.onnx.export (TorchScript)",
        "training_data_sha256": sha256_file(args.samples),
        "seed": args.seed,
        "threads": args.threads,
        "torch_version": torch.__version__,
        "training": {
            "samples": n,
            "train_rows": int(len(result.train_index)),
            "validation_rows": int(len(result.validation_index)),
            "validation": validation,
            "epochs_cap": args.epochs,
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "patience": args.patience,
            "min_delta": config.min_delta,
            "weight_decay": config.weight_decay,
            "loss": "cross-entropy weighted by inverse class frequency, unlabelled ignored",
            "class_weights": result.class_weights.tolist(),
            "time_augmentation": {"drop_dates": config.drop_dates, "shift_dates": config.shift_dates},
            "seconds": round(train_seconds, 2),
            "processes": result.world_size,
        },
        "onnx_check": None,  # filled in by publish
        "metrics": {k: report[k] for k in ("evaluated_on", "samples", "overall_accuracy", "kappa", "macro_f1")},
    }
    if args.test is not None:
        sidecar["test_data_sha256"] = sha256_file(args.test)
    if args.note:
        sidecar["note"] = args.note
    # Cross-check on real rows (NaNs included) when onnxruntime is importable.
    check_rows = eval_cube[: min(len(eval_cube), 512)]
    out: Path = args.out
    publish(out, checkpoint=lambda path: export.save_checkpoint(path, classifier, checkpoint_config),
            graphs=[Graph("model.onnx", export=lambda path: export.export_onnx(classifier, dates, bands, path),
                          check=lambda path: export.onnxruntime_max_abs_diff(path, classifier, check_rows),
                          checked={"rows": int(len(check_rows))})],
            metrics=report, sidecar=sidecar, write_json=_write_json)
    emit({"event": "done", "model": str((out / "model.onnx").resolve()),
          "overall_accuracy": report["overall_accuracy"], "kappa": _finite(report["kappa"])})
    return 0


def _load_for_inference(model: Path):
    from .data import InputError
    from .export import load_checkpoint

    directory = model.parent
    sidecar_path, checkpoint = directory / "model.json", directory / "model.pt"
    for f in (sidecar_path, checkpoint):
        if not f.is_file():
            raise InputError(f"{f}: missing (predict and bench run the PyTorch model saved beside model.onnx)")
    sidecar = json.loads(sidecar_path.read_text())
    if sidecar.get("contract") != SIDECAR_CONTRACT:
        raise InputError(f"{sidecar_path}: contract {sidecar.get('contract')!r} is not {SIDECAR_CONTRACT!r}")
    classifier, _ = load_checkpoint(checkpoint)
    return classifier, sidecar


def _read_matching(samples_path: Path, sidecar: dict):
    from .data import InputError, read_samples

    samples = read_samples(samples_path, require_label=False, missing="keep")
    bands, dates = sidecar["input"]["bands"], sidecar["input"]["dates"]
    if samples.bands != bands:
        raise InputError(f"{samples_path}: bands {samples.bands} differ from the model's {bands}")
    if len(samples.dates) != len(dates):
        raise InputError(f"{samples_path}: {len(samples.dates)} dates, the model takes {len(dates)} "
                         f"(matched by position)")
    return samples


def cmd_predict(args) -> int:
    import torch

    if args.patches is not None:
        sidecar_path = args.model.parent / "model.json"
        if sidecar_path.is_file() and json.loads(sidecar_path.read_text()).get("arch") == "asunet":
            from .sr_cli import predict_sr_command

            return predict_sr_command(args, emit, log)
        from .segment_cli import predict_segmentation_command

        return predict_segmentation_command(args, emit, log)
    if args.samples is None:
        from .data import InputError

        raise InputError("predict needs --samples CSV (or --patches DIR for fg-unet)")

    from .export import replace_atomically

    classifier, sidecar = _load_for_inference(args.model)
    samples = _read_matching(args.samples, sidecar)
    with torch.no_grad():
        probs = torch.cat([classifier.probabilities(torch.from_numpy(samples.cube[s:s + 4096]))
                           for s in range(0, len(samples), 4096)]).numpy()
    codes = [c["code"] for c in sidecar["output"]["classes"]]
    tmp = args.out.with_name(args.out.name + ".tmp")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row"] + (["id"] if samples.ids is not None else []) + ["predicted"] + [str(c) for c in codes])
        for i, p in enumerate(probs):
            w.writerow([i] + ([samples.ids[i]] if samples.ids is not None else []) + [codes[int(p.argmax())]]
                       + [f"{v:.9g}" for v in p])
    replace_atomically(tmp, args.out)
    log(f"{args.out}: probabilities of {len(samples)} samples over {len(codes)} classes")
    emit({"event": "done", "probabilities": str(args.out.resolve()), "samples": len(samples)})
    return 0


def cmd_bench(args) -> int:
    import torch

    from .data import InputError

    if args.repeat < 1 or args.batch_size < 1:
        raise InputError("--repeat and --batch-size must be ≥ 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.patches is not None:
        from .segment_cli import bench_segmentation_command

        return bench_segmentation_command(args, emit)
    if args.samples is None:
        raise InputError("bench needs --samples CSV (or --patches DIR for fg-unet)")
    classifier, sidecar = _load_for_inference(args.model)
    samples = _read_matching(args.samples, sidecar)
    x = torch.from_numpy(samples.cube)

    def run():
        with torch.no_grad():
            for s in range(0, len(x), args.batch_size):
                classifier.probabilities(x[s:s + args.batch_size])

    run()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    best, median = min(times), float(np.median(times))
    emit({"event": "bench", "arch": sidecar["arch"], "samples": len(samples), "repeat": args.repeat,
          "batch_size": args.batch_size, "threads": torch.get_num_threads(), "torch_version": torch.__version__,
          "seconds_median": median, "seconds_best": best,
          "samples_per_s": len(samples) / median, "samples_per_s_best": len(samples) / best})
    return 0


if __name__ == "__main__":
    sys.exit(main())
