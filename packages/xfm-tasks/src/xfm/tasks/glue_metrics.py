"""GLUE task metrics from scikit-learn / SciPy (percentages).

=======  ===============================================
task     metrics
=======  ===============================================
cola     Matthews correlation
sst2     accuracy
mrpc     F1 (positive class) and accuracy
stsb     Pearson and Spearman correlation
qqp      accuracy and F1
mnli     accuracy (matched / mismatched are two splits)
qnli     accuracy
rte      accuracy
=======  ===============================================
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["GLUE_METRICS", "glue_metrics"]

GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews",),
    "sst2": ("accuracy",),
    "mrpc": ("f1", "accuracy"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
}


def glue_metrics(
    task: str, predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """The metrics of ``task`` (``GLUE_METRICS``) in percent; the first one is the main metric.

    ``predictions`` are class ids (regression scores for ``stsb``).
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if task not in GLUE_METRICS:
        raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_METRICS)}")
    pred, gold = np.asarray(predictions), np.asarray(labels)
    if pred.shape != gold.shape or pred.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and labels {gold.shape} must be equal 1-D")
    fns = {
        "matthews": lambda: matthews_corrcoef(gold, pred),
        "accuracy": lambda: accuracy_score(gold, pred),
        "f1": lambda: f1_score(gold, pred),
        "pearson": lambda: pearsonr(pred.astype(float), gold.astype(float))[0],
        "spearman": lambda: spearmanr(pred.astype(float), gold.astype(float))[0],
    }
    return {name: 100.0 * float(fns[name]()) for name in GLUE_METRICS[task]}
