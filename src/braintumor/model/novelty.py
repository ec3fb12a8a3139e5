"""Is a scan like the ones the model was trained on? A per-scan novelty score and an `unlike_training` flag.

A classifier answers every scan with one of its classes, also a scan from another scanner, sequence or hospital
that looks like nothing it learnt from, and there its probabilities (even calibrated ones) can be confidently
wrong. The score measures how far the scan's features (the 2048 numbers the ResNet50's `fc` head reads) lie from
the Training scans' features: the smallest Mahalanobis distance to a class mean, with one covariance shared by the
classes (Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018; one layer, no input perturbation), Ledoit-Wolf shrinkage because 2048 dimensions are many
for a few thousand scans.

Fitted by the train stage on the train scans through the eval preset, and saved in the model file with its
threshold: the score that `model.unlike_training_quantile` (0.95) of the val scans stay under. Reported as
`novelty` = score / threshold, so `novelty > 1` (`unlike_training`) means "less like the Training scans than 95 %
of the held-out Training-source scans": treat that answer with care, and look at the scan. On the public dataset
this score was chosen over the highest probability, the energy score and the distance to the 10th nearest Training
scan by how well it ranks wrong answers first on val and its intensity-shifted copies
(benchmarks/unlike_training.py; the README has the figures).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

UNLIKE_TRAINING_ABOVE = 1.0  # novelty is score / threshold: above 1, less like Training than the quantile of val


def unlike_training(novelty: np.ndarray | float) -> np.ndarray:
    """The `unlike_training` flag of novelty scores (as Novelty.scores gives them): the one place it is decided."""
    return np.asarray(novelty) > UNLIKE_TRAINING_ABOVE


@dataclass(frozen=True)
class Novelty:
    means: torch.Tensor  # (C, D) float32: the train scans' mean features per class
    precision: torch.Tensor  # (D, D) float32: inverse of their shared (shrunk) covariance
    threshold: float  # the score at `quantile` on the val scans
    quantile: float

    def raw(self, features: torch.Tensor) -> np.ndarray:
        """(N, D) features -> (N,) squared Mahalanobis distance to the nearest class mean."""
        if len(features) == 0:
            return np.zeros(0)
        d = features.double()[:, None, :] - self.means.double()[None]  # (N, C, D)
        return ((d @ self.precision.double()) * d).sum(dim=2).min(dim=1).values.numpy()

    def scores(self, features: torch.Tensor) -> np.ndarray:
        """(N, D) features -> (N,) novelty: the raw score over the threshold; above 1 = unlike Training."""
        return self.raw(features) / self.threshold

    def to_dict(self) -> dict:
        return {
            "method": "mahalanobis",
            "means": self.means,
            "precision": self.precision,
            "threshold": self.threshold,
            "quantile": self.quantile,
        }

    @classmethod
    def from_dict(cls, spec: dict | None) -> Novelty | None:
        """None for model files without the score (trained before it, or with model.unlike_training_quantile 0)."""
        if not spec:
            return None
        return cls(spec["means"], spec["precision"], float(spec["threshold"]), float(spec["quantile"]))


def fit_novelty(
    train_features: torch.Tensor, train_labels: np.ndarray, val_features: torch.Tensor, quantile: float
) -> Novelty:
    """Class means and shared precision from the train scans' features; threshold from the val scans'."""
    from sklearn.covariance import LedoitWolf

    x = train_features.double().numpy()
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])  # (C, D)
    centred = x - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    fitted = Novelty(torch.from_numpy(means).float(), torch.from_numpy(precision).float(), 1.0, quantile)
    threshold = float(np.quantile(fitted.raw(val_features), quantile)) if len(val_features) else 1.0
    return Novelty(fitted.means, fitted.precision, max(threshold, 1e-12), quantile)
