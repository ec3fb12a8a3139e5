"""What evaluation found, as types: the evaluate stage builds them (scoring.py), eval.json stores them, and the
report, the model card and the stage's own summary read them by attribute.

`SetScores`: one set of scans (all Testing, its leak-free part, a side of the image-size split, the external set
and its copy-free part). `Evaluation`: eval.json, Testing with its leak-free part and the external set when there is
one. `to_dict` writes eval.json's layout and `from_dict` reads it back (missing figures read as None);
`mlflow_metrics` names every scalar figure for MLflow, the one place those names are made.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

HEADLINE = ("accuracy", "macro_f1", "weighted_f1", "log_loss", "ece", "roc_auc_ovr")


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ClassScores:
        return cls(**{f.name: spec[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class FlagScores:
    """How the `unlike_training` flag (novelty > 1) splits a set: how many it flags, the accuracy on either side,
    and the ROC AUC of the novelty score for telling wrong answers from right ones. None: no scan to stand on."""

    n_flagged: int
    flagged_share: float | None
    accuracy_flagged: float | None
    accuracy_unflagged: float | None
    error_auroc: float | None
    quantile: float  # the val quantile the score's 1 stands for (the model file's)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FlagScores:
        return cls(**{f.name: spec.get(f.name) for f in fields(cls)})


@dataclass(frozen=True)
class SizeSplit:
    """A set split by whether some Training scan of a scan's class has its image size (`seen`) or none has
    (`unseen`: a scan from a source the model never learnt its class from)."""

    seen: SetScores
    unseen: SetScores


@dataclass(frozen=True)
class SetScores:
    """The metrics of one set of scans. Headline figures are None where the set has no scan (or, for ROC AUC,
    fewer than two classes). The optional parts are None where they do not apply: `per_class` on a set's part
    (leak-free, copy-free: see the whole set's), `temperature` and `by_image_size` on a side of the split,
    `unlike_training` for a model file without the novelty score."""

    n: int
    accuracy: float | None = None
    macro_f1: float | None = None
    weighted_f1: float | None = None
    log_loss: float | None = None
    ece: float | None = None
    roc_auc_ovr: float | None = None
    per_class: dict[str, ClassScores] | None = None
    ece_uncalibrated: float | None = None  # before temperature scaling
    temperature: float | None = None
    unlike_training: FlagScores | None = None
    by_image_size: SizeSplit | None = None

    def of_class(self, name: str) -> ClassScores | None:
        """The class's figures where this set holds a scan of it, None otherwise."""
        score = (self.per_class or {}).get(name)
        return score if score is not None and score.support else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n": self.n, **{name: getattr(self, name) for name in HEADLINE}}
        if self.per_class is not None:
            out["per_class"] = {c: vars(s).copy() for c, s in self.per_class.items()}
        out["ece_uncalibrated"] = self.ece_uncalibrated
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.unlike_training is not None:
            out["unlike_training"] = vars(self.unlike_training).copy()
        if self.by_image_size is not None:
            out["by_image_size"] = {side: getattr(self.by_image_size, side).to_dict() for side in ("seen", "unseen")}
        return out

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> SetScores:
        per_class, flags, by_size = spec.get("per_class"), spec.get("unlike_training"), spec.get("by_image_size")
        return cls(
            n=spec.get("n", 0),
            **{name: spec.get(name) for name in HEADLINE},
            per_class=None if per_class is None else {c: ClassScores.from_dict(s) for c, s in per_class.items()},
            ece_uncalibrated=spec.get("ece_uncalibrated"),
            temperature=spec.get("temperature"),
            unlike_training=FlagScores.from_dict(flags) if flags else None,
            by_image_size=(
                SizeSplit(SetScores.from_dict(by_size["seen"]), SetScores.from_dict(by_size["unseen"]))
                if by_size
                else None
            ),
        )


@dataclass(frozen=True)
class ExternalScores:
    """The external set (evaluate.external_data): all of it, and its part without copies of Training scans."""

    path: str
    scores: SetScores
    n_excluded: int  # unusable files left out
    exact_in_train: int  # byte-identical copies of Training scans
    near_in_train: int  # near-identical copies
    copy_free: SetScores

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            **self.scores.to_dict(),
            "n_excluded": self.n_excluded,
            "exact_in_train": self.exact_in_train,
            "near_in_train": self.near_in_train,
            "copy_free": self.copy_free.to_dict(),
        }

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ExternalScores:
        return cls(
            path=spec["path"],
            scores=SetScores.from_dict(spec),
            n_excluded=spec.get("n_excluded", 0),
            exact_in_train=spec.get("exact_in_train", 0),
            near_in_train=spec.get("near_in_train", 0),
            copy_free=SetScores.from_dict(spec.get("copy_free") or {}),
        )


@dataclass(frozen=True)
class Evaluation:
    """eval.json: the Testing set's scores at the top level, its leak-free part (no byte- or near-identical copy
    in Training) under `leak_free`, and the external set under `external`."""

    testing: SetScores
    leak_free: SetScores
    external: ExternalScores | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {**self.testing.to_dict(), "leak_free": self.leak_free.to_dict()}
        if self.external is not None:
            out["external"] = self.external.to_dict()
        return out

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Evaluation:
        external = spec.get("external")
        return cls(
            testing=SetScores.from_dict(spec),
            leak_free=SetScores.from_dict(spec.get("leak_free") or {}),
            external=ExternalScores.from_dict(external) if external else None,
        )

    def named_sets(self) -> list[tuple[str, SetScores]]:
        """(name, scores) of every scored set, as the report and the model card title them."""
        sets = [("all Testing", self.testing), ("leak-free Testing", self.leak_free)]
        if self.external is not None:
            sets += [("external", self.external.scores), ("external without copies", self.external.copy_free)]
        return sets

    def mlflow_metrics(self) -> tuple[dict[str, float], dict[str, float]]:
        """(Testing's figures, the external set's) under their MLflow names: `test_accuracy`,
        `test_leak_free_macro_f1`, `test_size_unseen_accuracy`, `test_unlike_training_error_auroc`,
        `external_copy_free_accuracy`, `external_exact_in_train`, ... Per-class figures are not among them, nor
        figures that could not be computed (None)."""
        testing = {**flatten(self.testing, "test_"), **flatten(self.leak_free, "test_leak_free_")}
        external: dict[str, float] = {}
        if self.external is not None:
            ext = self.external
            external = {
                **flatten(ext.scores, "external_"),
                **{
                    f"external_{name}": float(getattr(ext, name))
                    for name in ("n_excluded", "exact_in_train", "near_in_train")
                },
                **flatten(ext.copy_free, "external_copy_free_"),
            }
        return testing, external


def flatten(scores: SetScores, prefix: str) -> dict[str, float]:
    """One set's scalar figures under flat names: `{prefix}accuracy`, `{prefix}unlike_training_n_flagged`,
    `{prefix}size_seen_macro_f1`, ... (None figures left out)."""
    scalars = {"n": scores.n, **{name: getattr(scores, name) for name in HEADLINE}}
    scalars.update(ece_uncalibrated=scores.ece_uncalibrated, temperature=scores.temperature)
    if scores.unlike_training is not None:
        scalars.update({f"unlike_training_{k}": v for k, v in vars(scores.unlike_training).items()})
    flat = {f"{prefix}{name}": float(value) for name, value in scalars.items() if value is not None}
    if scores.by_image_size is not None:
        for side in ("seen", "unseen"):
            flat.update(flatten(getattr(scores.by_image_size, side), f"{prefix}size_{side}_"))
    return flat
