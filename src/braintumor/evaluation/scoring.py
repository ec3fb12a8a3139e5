"""A labelled set scored by a model file's Predictor, and its metrics: the one path for the Testing set, the
external set and the champion's re-scoring (pipeline.evaluate).

`score_rows` runs the network once over a set's manifest rows (decoded through the image cache); `score_set` turns
that into the set's metrics (results.SetScores): all of it (per class), its part without copies of Training scans
(leak-free Testing, copy-free external), and both split by whether a Training scan of the class has the image size
(`by_image_size`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from braintumor.config import Params
from braintumor.data.cache import cached_images
from braintumor.evaluation.metrics import classification_metrics, expected_calibration_error, novelty_metrics
from braintumor.evaluation.results import SetScores, SizeSplit
from braintumor.fileio import project_path
from braintumor.model.predictor import Predictor
from braintumor.scans.limits import ImageLimits


@dataclass(frozen=True)
class ScoredSet:
    """The network's outputs on a set's rows, before any metric."""

    logits: torch.Tensor  # (N, C) float64, before the temperature
    labels: np.ndarray  # (N,) class indices
    novelty: np.ndarray | None  # (N,), None when the model file has no novelty score

    def subset(self, mask: np.ndarray) -> "ScoredSet":
        novelty = None if self.novelty is None else self.novelty[mask]
        return ScoredSet(self.logits[torch.from_numpy(np.asarray(mask))], self.labels[mask], novelty)


def score_rows(predictor: Predictor, frame: pd.DataFrame, root: str | Path, params: Params) -> ScoredSet:
    """The network's outputs on manifest-like rows (`path` under `root`, `label`), decoded through the image cache
    at the model file's own preprocessing."""
    images = cached_images(
        frame, root, predictor.prep.scan, project_path(params.paths.cache), limits=ImageLimits.of(params.data)
    )  # (N, S, S) uint8, memory-mapped
    labels = frame["label"].map({c: i for i, c in enumerate(params.data.classes)}).to_numpy(dtype=np.int64)
    logits, novelty = predictor.outputs(images)
    return ScoredSet(logits, labels, novelty)


def set_metrics(predictor: Predictor, scored: ScoredSet, params: Params, *, per_class: bool = True) -> SetScores:
    """Headline metrics (probabilities after temperature scaling), the temperature and ECE before it, and how the
    `unlike_training` flag splits the scans (when the model file has the novelty score)."""
    bins, classes = params.evaluate.calibration_bins, params.data.classes
    probs = predictor.calibrated(scored.logits)
    scores = classification_metrics(scored.labels, probs, classes, bins=bins)
    return replace(
        scores,
        per_class=scores.per_class if per_class else None,
        ece_uncalibrated=(
            expected_calibration_error(scored.labels, predictor.calibrated(scored.logits, False), bins=bins)
            if len(scored.labels)
            else None
        ),
        temperature=predictor.inference.temperature,
        unlike_training=(
            None
            if scored.novelty is None
            else novelty_metrics(scored.labels, probs, scored.novelty, predictor.novelty.quantile)
        ),
    )


def by_image_size(predictor: Predictor, scored: ScoredSet, size_seen: np.ndarray, params: Params) -> SizeSplit:
    """Metrics (per class included) on the scans whose image size some Training scan of their class has (`seen`)
    and on the others (`unseen`): how the model does on scans from sources it learnt the class from and on scans
    from other sources. Copies of Training scans nearly always have a seen size: the part without them is split too,
    to compare sources without them. (A side often lacks a class: macro-F1 averages the classes present.) The
    temperature is the set's, not repeated."""
    seen, unseen = (
        replace(set_metrics(predictor, replace(scored.subset(mask), novelty=None), params), temperature=None)
        for mask in (size_seen, ~size_seen)
    )
    return SizeSplit(seen, unseen)


def score_set(
    predictor: Predictor, scored: ScoredSet, params: Params, *, part: np.ndarray, size_seen: np.ndarray
) -> tuple[SetScores, SetScores]:
    """(the whole set's metrics, its `part`'s), each with its `by_image_size` split; the part's without per-class
    figures. `part`: the scans that are no copy of a Training scan (leak-free Testing, copy-free external)."""
    whole = replace(
        set_metrics(predictor, scored, params), by_image_size=by_image_size(predictor, scored, size_seen, params)
    )
    within = replace(
        set_metrics(predictor, scored.subset(part), params, per_class=False),
        by_image_size=by_image_size(predictor, scored.subset(part), size_seen[part], params),
    )
    return whole, within


def prediction_table(predictor: Predictor, scored: ScoredSet, rows: pd.DataFrame, **flags: np.ndarray) -> pd.DataFrame:
    """A row per scored scan: `rows`' columns (which scan, its label), then the Predictor's answer as predict, the
    server and the page give it (Predictor.table: `label` named `predicted` here, each class's probability as
    `p_<class>`), then the `flags` (leak_free, size_seen_in_training, ...), then `novelty` and `unlike_training`
    when the model file has the score."""
    answer = predictor.table(predictor.calibrated(scored.logits), scored.novelty).rename(
        columns={"label": "predicted", **{name: f"p_{name}" for name in predictor.classes}}
    )
    novelty = [column for column in ("novelty", "unlike_training") if column in answer]
    return pd.concat(
        [rows.reset_index(drop=True), answer.drop(columns=novelty), pd.DataFrame(flags), answer[novelty]], axis=1
    )
