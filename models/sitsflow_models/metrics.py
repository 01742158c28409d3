"""Accuracy metrics of a classification against reference labels: overall accuracy,
Cohen's kappa, per-class precision / recall / F1 and the confusion matrix.

Macro F1 is scikit-learn's `f1_score(average="macro", zero_division=0)`: the mean over
the classes present in the reference or the prediction, as the host's `sitsflow_eval`
computes it (one definition for `train`, `eval`, runs and reports)."""

from __future__ import annotations

import numpy as np

from .data import ClassInfo


def confusion(reference: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """`[C, C]` counts, rows = reference, columns = predicted; index -1 (unlabelled) is skipped."""
    keep = reference >= 0
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (reference[keep], predicted[keep]), 1)
    return matrix


def report(reference: np.ndarray, predicted: np.ndarray, classes: list[ClassInfo], evaluated_on: str) -> dict:
    """The `metrics.json` document."""
    matrix = confusion(reference, predicted, len(classes))
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    oa = correct / total if total else float("nan")
    # Kappa: agreement beyond what the marginals give by chance.
    expected = float((matrix.sum(0) * matrix.sum(1)).sum()) / total**2 if total else float("nan")
    kappa = (oa - expected) / (1 - expected) if total and expected < 1 else float("nan")
    per_class = []
    for i, c in enumerate(classes):
        tp = int(matrix[i, i])
        predicted_n = int(matrix[:, i].sum())
        reference_n = int(matrix[i, :].sum())
        precision = tp / predicted_n if predicted_n else None
        recall = tp / reference_n if reference_n else None
        # F1 = 2TP / (predicted + reference): 0 for a class never predicted (or never
        # right), undefined only when the class is absent from both.
        f1 = 2 * tp / (predicted_n + reference_n) if predicted_n + reference_n else None
        per_class.append({"code": c.code, "name": c.name, "precision": precision, "recall": recall,
                          "f1": f1, "support": reference_n})
    f1s = [p["f1"] for p in per_class if p["f1"] is not None]
    return {
        "evaluated_on": evaluated_on,
        "samples": total,
        "overall_accuracy": oa,
        "kappa": kappa,
        "macro_f1": float(np.mean(f1s)) if f1s else None,
        "classes": per_class,
        "confusion_matrix": {
            "codes": [c.code for c in classes],
            "rows": "reference",
            "columns": "predicted",
            "counts": matrix.tolist(),
        },
    }
