"""External validation: another labelled dataset, checked for copies of Training scans, then scored by `evaluate`.

A model that scores well on its own dataset's Testing split may only have learnt that dataset's look; another
source (another hospital, another public set) is the honest check. Public sets are often assembled from the
same sources, so the external scans are compared with Training by validate's duplicate machinery first
(byte-identical and near copies), and `evaluate` reports the metrics on all of them and on the copy-free part.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from braintumor.config import DataConfig
from braintumor.data.duplicates import best_match
from braintumor.data.scan import scan_class_folders
from braintumor.data.validate import inspect_all
from braintumor.errors import DataError
from braintumor.scans.limits import ImageLimits

log = logging.getLogger(__name__)


@dataclass
class ExternalSet:
    frame: pd.DataFrame  # path (relative to root), label, sha256, width, height, exact_in_train, near_in_train
    root: Path
    excluded: list[dict[str, str]]  # {"path", "reason"} of unusable files

    @property
    def copy_free(self) -> np.ndarray:
        return ~(self.frame["exact_in_train"] | self.frame["near_in_train"]).to_numpy()


def load_external(
    root: str | Path,
    training: pd.DataFrame,
    data_root: str | Path,
    config: DataConfig,
    *,
    workers: int | None = None,
    progress: bool = True,
) -> ExternalSet:
    """Scan `root/<class>/` (data.aliases apply), check every file, and flag the copies of `training` scans.

    `training`: the manifest rows of Training (train and val), with their paths relative to `data_root`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"evaluate.external_data = {str(root)!r}: no such folder. Point it at a folder of "
            f"<class>/ folders ({', '.join(config.classes)}; data.aliases apply), or set it to '' ."
        )
    scan = scan_class_folders(root, root, "external", config.classes, config.aliases)
    infos = inspect_all(
        [f.path for f in scan.files],
        ImageLimits.of(config),
        workers=workers,
        progress=progress,
        desc="evaluate: checking the external set",
    )
    excluded = [{"path": f.relpath, "reason": i["problem"]} for f, i in zip(scan.files, infos) if "problem" in i]
    for item in excluded:
        log.warning("external set: excluded %s: %s", item["path"], item["reason"])
    usable = [(f, i) for f, i in zip(scan.files, infos) if "problem" not in i]
    if not usable:
        raise DataError(f"the external set {root} holds no usable image (see the warnings above).")

    train_infos = inspect_all(
        [Path(data_root) / p for p in training["path"]],
        ImageLimits.of(config),
        workers=workers,
        progress=progress,
        desc="evaluate: fingerprinting Training",
    )
    train_hashes = set(training["sha256"])
    train_prints = np.stack([i["fingerprint"] for i in train_infos if "fingerprint" in i]).astype(np.float32)
    prints = np.stack([i["fingerprint"] for _, i in usable]).astype(np.float32)
    best, _ = best_match(prints, train_prints)
    exact = np.array([i["sha256"] in train_hashes for _, i in usable])
    frame = pd.DataFrame(
        {
            "path": [f.relpath for f, _ in usable],
            "label": [f.label for f, _ in usable],
            "sha256": [i["sha256"] for _, i in usable],
            "width": [i["width"] for _, i in usable],
            "height": [i["height"] for _, i in usable],
            "exact_in_train": exact,
            "near_in_train": (best >= config.near_duplicate_threshold) & ~exact,
        }
    )
    return ExternalSet(frame=frame, root=root, excluded=excluded)
