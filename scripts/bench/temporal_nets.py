"""TempCNN, LSTM and L-TAE against the random forest on the same folds of real sample
sets: the table of docs/figures.md ("Temporal networks against the forest"). Every model
is trained by `sitsflow train` (the forest by its plugin, the networks by the recipes of
`models/`) on the same fold files, so the figures are what an operator would get.

    python3 scripts/bench/temporal_nets.py target/release/sitsflow /tmp/temporal-nets [SET …]

Sets (each read where it lies; a missing one is named and skipped):
  formosat2-split   Formosat-2, its own polygon-disjoint train / test split
  formosat2-folds   Formosat-2, train and test pooled, 5 folds grouped by polygon
  formosat2-tiny    Formosat-2, 7 of 13 training classes cut to 5 samples, whole test set
  flanders          the Flanders patch's 2018 per-date samples (runs/flanders-transfer, 3
                    land-cover classes), grouped by 32 px block: 4 folds (the patch's 4 blocks)
  slovenia          the Slovenia patch's 2016 per-date NDVI samples (runs/slovenia-transfer,
                    LULC classes), 5 folds grouped by 32 px block
The last two are the samples CSVs the transfer runs hand their networks
(`sitsflow run configs/flanders-transfer.toml`, `configs/slovenia-transfer.toml`).
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
F2 = ROOT.parent / "shared" / "data" / "formosat2-tempcnn"
ARCHS = ("random-forest", "tempcnn", "lstm", "ltae")
FOLDS = 5
SEED = 11


def read(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(path.open()))
    return rows[0], rows[1:]


def write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def grouped_folds(header: list[str], rows: list[list[str]], k: int, seed: int) -> list[int]:
    """Fold of each row: a group's rows stay together; each class's groups are shuffled
    (seeded) and dealt out in turn, so every fold holds some of each class."""
    label, group = header.index("label"), header.index("group")
    by_class: dict[str, list[str]] = defaultdict(list)
    seen = set()
    for r in rows:
        if r[group] not in seen:
            seen.add(r[group])
            by_class[r[label]].append(r[group])
    rng = random.Random(seed)
    fold_of_group, turn = {}, 0
    for c in sorted(by_class):
        groups = sorted(by_class[c])
        rng.shuffle(groups)
        for g in groups:
            fold_of_group[g] = turn % k
            turn += 1
    return [fold_of_group[r[group]] for r in rows]


def cases(name: str, work: Path):
    """(training CSV, test CSV, classes CSV or None) of each fold of set `name`."""
    if name.startswith("formosat2"):
        if not F2.is_dir():
            raise FileNotFoundError(F2)
        header, train = read(F2 / "train.csv")
        _, test = read(F2 / "test.csv")
        classes = F2 / "classes.csv"
        if name == "formosat2-split":
            yield F2 / "train.csv", F2 / "test.csv", classes
        elif name == "formosat2-tiny":
            # The first case of tiny_classes.py (the same cut, the same seed).
            from tiny_classes import subsample

            small = ["barley", "corn", "grassland", "rapeseed", "soy", "urban", "wheat"]
            subsample(F2 / "train.csv", work / "train.csv", small, 5, 3)
            yield work / "train.csv", F2 / "test.csv", classes
        else:
            yield from folds(header, train + test, work, classes)
        return
    run = {"flanders": "flanders-transfer", "slovenia": "slovenia-transfer"}[name]
    samples = ROOT / "runs" / run / "models" / "tempcnn.samples.csv"
    if not samples.is_file():
        raise FileNotFoundError(f"{samples} (run `sitsflow run configs/{run}.toml` first)")
    header, rows = read(samples)
    yield from folds(header, rows, work, samples.with_name("tempcnn.classes.csv"))


def folds(header, rows, work: Path, classes: Path | None):
    # As many folds as groups when they are fewer (the Flanders patch has four 32 px blocks).
    k_folds = min(FOLDS, len({r[header.index("group")] for r in rows}))
    fold = grouped_folds(header, rows, k_folds, SEED)
    for k in range(k_folds):
        train = write(work / f"fold{k}-train.csv", header, [r for r, f in zip(rows, fold) if f != k])
        test = write(work / f"fold{k}-test.csv", header, [r for r, f in zip(rows, fold) if f == k])
        yield train, test, classes


def train(sitsflow: str, arch: str, train: Path, test: Path, classes: Path | None, out: Path) -> dict:
    command = [sitsflow, "train", "--arch", arch, "--samples", str(train), "--test", str(test), "--missing", "keep",
               "--seed", str(SEED), "--out", str(out)]
    if classes is not None and classes.is_file():
        command += ["--classes", str(classes)]
    if arch == "random-forest":
        command += ["--params", json.dumps({"n_trees": 100})]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}:\n{done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return metrics.get("test", metrics)


def main() -> None:
    sitsflow, out = sys.argv[1], Path(sys.argv[2])
    names = sys.argv[3:] or ["formosat2-split", "formosat2-folds", "formosat2-tiny", "flanders", "slovenia"]
    print("| set | " + " | ".join(ARCHS) + " |")
    print("|---|" + "---|" * len(ARCHS))
    for name in names:
        work = out / name
        work.mkdir(parents=True, exist_ok=True)
        try:
            splits = list(cases(name, work))
        except FileNotFoundError as e:
            print(f"{name}: skipped, missing {e}", file=sys.stderr)
            continue
        cells = []
        for arch in ARCHS:
            started = time.perf_counter()
            oa, f1 = [], []
            for i, (train_csv, test_csv, classes) in enumerate(splits):
                m = train(sitsflow, arch, train_csv, test_csv, classes, work / f"{arch}-{i}")
                oa.append(m["overall_accuracy"])
                f1.append(m["macro_f1"])
            mean = lambda v: sum(v) / len(v)
            cells.append(f"{mean(oa):.3f} / {mean(f1):.3f}")
            print(f"{name} {arch}: OA {mean(oa):.4f} (folds {', '.join(f'{x:.3f}' for x in oa)}), macro F1 "
                  f"{mean(f1):.4f}, {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        print(f"| {name} ({len(splits)} fold{'s' if len(splits) > 1 else ''}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
