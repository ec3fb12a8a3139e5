"""Test-set metrics from predicted probabilities (scikit-learn where it has them)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from braintumor.evaluation.results import ClassScores, Evaluation, FlagScores, SetScores, SizeSplit
from braintumor.evaluation.scores import macro_f1
from braintumor.model.novelty import unlike_training


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], *, bins: int = 15) -> SetScores:
    """Headline metrics and per-class precision/recall/F1/support. probs: (N, C), rows sum to 1.

    macro_f1 averages the classes present in y_true: a subset that holds no scan of a class (the public set's
    leak-free Testing scans have no no_tumor scan) is not marked down by a zero for it. Per-class figures are
    given for every class (support 0 where absent)."""
    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return SetScores(n=0, per_class={})
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return SetScores(
        n=int(len(y_true)),
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro_f1=macro_f1(y_true, y_pred, len(classes)),
        weighted_f1=float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        log_loss=float(log_loss(y_true, probs, labels=labels)),
        ece=expected_calibration_error(y_true, probs, bins=bins),
        roc_auc_ovr=roc_auc_ovr(y_true, probs),
        per_class={
            name: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, name in enumerate(classes)
        },
    )


def leak_free_mask(test: pd.DataFrame) -> np.ndarray:
    """Testing rows with neither a byte-identical nor a near-identical copy in Training (manifest flags)."""
    return ~(test["exact_in_train"].astype(bool) | test["near_in_train"].astype(bool)).to_numpy()


def unseen_size_sentence(by_size: SizeSplit | None, name: str) -> str:
    """' N of the <name> scans have an image size no Training scan of their class has ...: accuracy A on them, B on
    the others.' from a set's `by_image_size`; '' when no scan is at an unseen size."""
    if by_size is None or not by_size.unseen.n:
        return ""
    seen, unseen = by_size.seen, by_size.unseen
    others = f", {seen.accuracy:.3f} on the {seen.n} others" if seen.n else ""
    return (
        f" {unseen.n} of the {name} scans have an image size no Training scan of their class has (another "
        f"source, likely): accuracy {unseen.accuracy:.3f} on them{others}."
    )


def roc_auc_ovr(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes present in y_true (None when fewer than two are)."""
    present = [c for c in range(probs.shape[1]) if 0 < (y_true == c).sum() < len(y_true)]
    if not present:
        return None
    return float(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in present]))


def reliability_table(y_true: np.ndarray, probs: np.ndarray, *, bins: int = 15) -> pd.DataFrame:
    """Per confidence bin: its range, count, mean confidence and accuracy (the reliability diagram's data)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table = []
    for b in range(bins):
        mask = index == b
        table.append(
            {
                "bin_lower": edges[b],
                "bin_upper": edges[b + 1],
                "count": int(mask.sum()),
                "confidence": float(confidence[mask].mean()) if mask.any() else np.nan,
                "accuracy": float(correct[mask].mean()) if mask.any() else np.nan,
            }
        )
    return pd.DataFrame(table)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, *, bins: int = 15) -> float:
    """Sum over confidence bins of (bin share) x |accuracy - mean confidence|."""
    table = reliability_table(y_true, probs, bins=bins)
    filled = table[table["count"] > 0]
    weights = filled["count"] / filled["count"].sum()
    return float((weights * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def roc_table(y_true: np.ndarray, probs: np.ndarray, classes: list[str], points: int = 101) -> pd.DataFrame:
    """One-vs-rest ROC curves on a common false-positive-rate grid, in long form: one row per (class, fpr) with
    columns `class`, `fpr`, `tpr` (classes absent from y_true are left out). The class names are data, not
    columns, so `dvc plots` draws one line per class whatever data.classes holds (dvc.yaml names no class)."""
    grid = np.linspace(0.0, 1.0, points)
    curves = []
    for c, name in enumerate(classes):
        if 0 < (y_true == c).sum() < len(y_true):
            fpr, tpr, _ = roc_curve(y_true == c, probs[:, c])
            curves.append(pd.DataFrame({"class": name, "fpr": grid, "tpr": np.interp(grid, fpr, tpr)}))
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["class", "fpr", "tpr"])


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts: rows are actual classes, columns predicted."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def novelty_metrics(y_true: np.ndarray, probs: np.ndarray, novelty: np.ndarray, quantile: float | None) -> FlagScores:
    """How the `unlike_training` flag (novelty > 1, novelty.py) splits a set of scans: how many it flags, the
    accuracy on flagged and on unflagged scans, and the ROC AUC of the novelty score for telling wrong answers from
    right ones (0.5: no better than chance). None where a figure has no scan to stand on. `quantile`: the val
    quantile the score's 1 stands for (the model file's)."""
    flagged = unlike_training(novelty)
    wrong = probs.argmax(axis=1) != y_true
    n = len(y_true)
    return FlagScores(
        n_flagged=int(flagged.sum()),
        flagged_share=float(flagged.mean()) if n else None,
        accuracy_flagged=float(1 - wrong[flagged].mean()) if flagged.any() else None,
        accuracy_unflagged=float(1 - wrong[~flagged].mean()) if (~flagged).any() else None,
        error_auroc=float(roc_auc_score(wrong, novelty)) if 0 < wrong.sum() < n else None,
        quantile=quantile,
    )


def novelty_rows(evaluation: Evaluation) -> list[list[Any]]:
    """One row per scored set with `unlike_training` figures (all Testing, leak-free Testing, the external set and
    its copy-free part): its name, size and NOVELTY_COLUMNS. Empty for a model without the score."""
    return [
        [name, scores.n, *(getattr(scores.unlike_training, k) for k in NOVELTY_COLUMNS)]
        for name, scores in evaluation.named_sets()
        if scores.unlike_training is not None
    ]


NOVELTY_COLUMNS = ("n_flagged", "flagged_share", "accuracy_flagged", "accuracy_unflagged", "error_auroc")
NOVELTY_HEADER = (
    "scans",
    "n",
    "flagged",
    "share flagged",
    "accuracy flagged",
    "accuracy not flagged",
    "ROC AUC for wrong answers",
)
