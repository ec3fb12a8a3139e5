"""The one macro-F1, shared by the training core (val, model selection) and evaluation (Testing, external).

numpy only: the training core runs on a bare CUDA machine with torch and torchvision, no scikit-learn."""

from __future__ import annotations

import numpy as np


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in `y_true` (nan when it is empty).

    A subset that holds no scan of a class (the public set's leak-free Testing scans have no no_tumor scan) is not
    marked down by a zero for it; predicting an absent class still costs the precision of that prediction's true
    class. Equals scikit-learn's f1_score(average="macro", labels=<classes present>, zero_division=0)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = [c for c in range(n_classes) if np.any(y_true == c)]
    if not present:
        return float("nan")
    scores = []
    for c in present:
        tp = np.sum((y_pred == c) & (y_true == c))
        scores.append(2 * tp / (np.sum(y_pred == c) + np.sum(y_true == c)))
    return float(np.mean(scores))
