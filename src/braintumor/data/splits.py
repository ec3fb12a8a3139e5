"""The split manifest: every usable scan with its role (train / val / test), class, hash and leak flags.

`val` is carved from Training, stratified by class and grouped by duplicates, so no image has an exact or near
copy on the other side. Training and evaluation read this file, never the folders, so the Testing set is never
used for model selection and evaluation can report a leak-free test subset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from braintumor.errors import DataError
from braintumor.fileio import atomic_path

MANIFEST_COLUMNS = [
    "path",
    "split",
    "label",
    "sha256",
    "group",
    "exact_in_train",
    "near_in_train",
    "width",
    "height",
    "mode",
]


def grouped_stratified_val(labels: list[str], groups: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the rows that go to `val`.

    Whole groups move together. Groups are stratified by their most common label and drawn in a seeded random
    order until each class has about `fraction` of its images in val (never all of them).
    """
    labels_arr = np.asarray(labels)
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels_arr), dtype=bool)
    members: dict[int, np.ndarray] = {}
    for group in np.unique(groups):
        members[int(group)] = np.flatnonzero(groups == group)
    by_class: dict[str, list[int]] = {}
    for group, rows in members.items():
        values, counts = np.unique(labels_arr[rows], return_counts=True)
        by_class.setdefault(str(values[counts.argmax()]), []).append(group)
    for label in sorted(by_class):
        class_groups = sorted(by_class[label])
        order = rng.permutation(len(class_groups))
        total = sum(len(members[g]) for g in class_groups)
        target = round(total * fraction)
        taken = 0
        for k in order:
            rows = members[class_groups[k]]
            if taken >= target or taken + len(rows) >= total:
                continue
            if taken + len(rows) > target * 1.5 + 1:  # a big duplicate cluster would overshoot; try smaller ones
                continue
            is_val[rows] = True
            taken += len(rows)
    return is_val


def write_manifest(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame[MANIFEST_COLUMNS].to_csv(tmp, index=False)


def read_manifest(path: str | Path, classes: list[str] | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"split manifest {path} not found. Run the validate stage first: `dvc repro validate` "
            "(or `braintumor validate`)."
        )
    frame = pd.read_csv(
        path, dtype={"path": str, "label": str, "split": str, "sha256": str, "mode": str}, keep_default_na=False
    )
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path} lacks the columns {missing}; it was written by another version. Rerun `dvc repro validate`."
        )
    if classes is not None:
        unknown = sorted(set(frame["label"]) - set(classes))
        if unknown:
            raise DataError(
                f"{path} has labels {unknown} that are not in data.classes {classes}. "
                "Rerun `dvc repro validate` after changing the classes."
            )
    return frame


def in_splits(frame: pd.DataFrame, *splits: str) -> pd.DataFrame:
    """The manifest rows of the given roles, in manifest order, with a fresh 0..n-1 index."""
    return frame[frame["split"].isin(splits)].reset_index(drop=True)


def size_seen_in_training(rows: pd.DataFrame, training: pd.DataFrame) -> np.ndarray:
    """Which `rows` have an image size (width x height) that some `training` scan of the same class has.

    Image size is a scanner's or a source's fingerprint (a 512 x 512 export, a 236 x 236 web copy): a class's scans
    at sizes none of its Training scans have likely come from elsewhere, and the model never learnt that class from
    scans like them. Both frames need `label`, `width` and `height` (the manifest's columns).
    """
    seen = set(zip(training["label"], training["width"].astype(int), training["height"].astype(int)))
    return np.array(
        [(label, int(w), int(h)) in seen for label, w, h in zip(rows["label"], rows["width"], rows["height"])],
        dtype=bool,
    )
