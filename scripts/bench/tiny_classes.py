"""TempCNN on training sets with tiny classes: the figure of docs/figures.md ("TempCNN on
tiny classes"). Cuts classes of the Formosat-2 training set down to a few samples (seeded),
trains TempCNN with the recipe as it is in MODELS (a `models/` folder: this checkout's, or
an older one from `git archive`), four seeds, and prints OA and macro F1 on the whole test
set.

    PYTHONPATH=.deps/models-python python3 scripts/bench/tiny_classes.py models ../shared/data/formosat2-tempcnn
"""

from __future__ import annotations

import csv
import random
import sys
import tempfile
from collections import defaultdict
from pathlib import Path


def subsample(train: Path, out: Path, small: list[str], keep: int, seed: int) -> int:
    rows = list(csv.reader(train.open()))
    header, rows = rows[0], rows[1:]
    by_class: dict[str, list[list[str]]] = defaultdict(list)
    for r in rows:
        by_class[r[0]].append(r)
    rng = random.Random(seed)
    kept = []
    for label, members in sorted(by_class.items()):
        kept += rng.sample(members, keep) if label in small else members
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(kept)
    return len(kept)


def main() -> None:
    import numpy as np  # here, so that `subsample` needs nothing beyond the standard library

    models, data = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    sys.path.insert(0, str(models))
    from sitsflow_models import metrics
    from sitsflow_models.data import encode_labels, model_classes, names_for_codes, read_classes, read_samples
    from sitsflow_models.train import TrainConfig, predict_logits, train

    nomenclature = read_classes(data / "classes.csv")

    def load(path: Path):
        samples = read_samples(path, missing="error")
        names_for_codes(samples, nomenclature)
        return samples

    test = load(data / "test.csv")
    cases = [
        ("7 of 13 classes cut to 5 samples", ["barley", "corn", "grassland", "rapeseed", "soy", "urban", "wheat"], 5, 3),
        ("3 classes cut to 3 samples", ["barley", "corn", "soy"], 3, 5),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, small, keep, seed in cases:
            path = Path(tmp) / "train.csv"
            rows = subsample(data / "train.csv", path, small, keep, seed)
            train_set = load(path)
            classes = model_classes(train_set, nomenclature)
            y_train = encode_labels(train_set, classes, nomenclature)
            y_test = encode_labels(test, classes, nomenclature)
            oas, f1s = [], []
            for s in [1, 2, 3, 4]:
                result = train(train_set.cube, y_train, train_set.groups, train_set.bands, len(classes), TrainConfig(arch="tempcnn", seed=s))
                predicted = predict_logits(result.classifier, test.cube).argmax(1).numpy()
                report = metrics.report(y_test, predicted, classes, "test")
                oas.append(report["overall_accuracy"])
                f1s.append(report["macro_f1"])
            print(f"{name} ({rows} rows): OA {np.mean(oas):.4f} ± {np.std(oas):.4f}, macro F1 {np.mean(f1s):.4f}", flush=True)


if __name__ == "__main__":
    main()
