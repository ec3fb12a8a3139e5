"""The `validate` stage: check every scan, find duplicates and Train/Test leakage, build the split manifest.

Reads `<data>/Training` and `<data>/Testing` and never modifies them; `stages/validate.py` writes the report
and the manifest this returns.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from braintumor.config import DataConfig
from braintumor.data.duplicates import THUMB, DisjointSets, best_match, fingerprint, near_pairs
from braintumor.data.scan import scan_dataset
from braintumor.data.splits import grouped_stratified_val, size_seen_in_training
from braintumor.errors import DataError
from braintumor.scans.limits import ImageLimits, problem_of, read_checked
from braintumor.scans.raster import to_grayscale
from braintumor.scans.read import open_checked

log = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    report: dict[str, Any]
    manifest: pd.DataFrame


def inspect_file(path: str, limits: ImageLimits) -> dict[str, Any]:
    """Hash, check and fingerprint one file. Runs in worker processes: returns a problem instead of raising."""
    try:
        data = read_checked(path, max_file_bytes=limits.max_file_bytes)  # its size is checked before reading
        image = open_checked(data, limits=limits, draft=THUMB, name=path)
        (width, height), mode = image.info["source_size"], image.info["source_mode"]
        return {
            "sha256": hashlib.sha256(data).hexdigest(),
            "width": width,
            "height": height,
            "mode": mode,
            "fingerprint": fingerprint(to_grayscale(image)),
        }
    except Exception as exc:  # one file's problem, whatever it is, never a crash of the scan
        return {"problem": problem_of(exc)}


def validate_dataset(
    root: str | Path, config: DataConfig, *, workers: int | None = None, progress: bool = True
) -> ValidationResult:
    scan = scan_dataset(root, config.classes, config.aliases)
    infos = inspect_all([f.path for f in scan.files], ImageLimits.of(config), workers=workers, progress=progress)

    problems = [
        {"path": f.relpath, "reason": info["problem"]} for f, info in zip(scan.files, infos) if "problem" in info
    ]
    if problems and config.on_bad_file == "fail":
        listing = "\n".join(f"  {p['path']}: {p['reason']}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(
            f"{len(problems)} unusable image file(s) under {root}:\n{listing}{more}\n"
            "Fix or remove them, or set data.on_bad_file: exclude to leave them out with a warning."
        )
    for p in problems:
        log.warning("excluded %s: %s", p["path"], p["reason"])

    usable = [(f, info) for f, info in zip(scan.files, infos) if "problem" not in info]
    for split in ("train", "test"):
        for label in config.classes:
            if not any(f.split == split and f.label == label for f, _ in usable):
                raise DataError(
                    f"no usable image of class {label} in the {split} split: every file there was "
                    "excluded (see the warnings above). Replace the broken files."
                )
    frame = pd.DataFrame(
        {
            "path": [f.relpath for f, _ in usable],
            "split": [f.split for f, _ in usable],
            "label": [f.label for f, _ in usable],
            "sha256": [i["sha256"] for _, i in usable],
            "width": [i["width"] for _, i in usable],
            "height": [i["height"] for _, i in usable],
            "mode": [i["mode"] for _, i in usable],
        }
    )
    prints = np.stack([i["fingerprint"] for _, i in usable]).astype(np.float32)  # (N, 4096)
    report, frame = _duplicates_and_splits(frame, prints, config)
    _check_train_and_val(frame, config)
    shift = image_size_shift(frame, config.classes)
    report = {
        **_counts(frame, problems, scan.ignored, config.classes),
        **report,
        "image_size_shift": shift,
        "image_size_warnings": size_shift_warnings(shift),
    }
    for line in report["image_size_warnings"]:
        log.warning(line)
    return ValidationResult(report=report, manifest=frame)


def _check_train_and_val(frame: pd.DataFrame, config: DataConfig) -> None:
    """Every class needs train scans to learn from and val scans to select the epoch on (else val metrics are NaN)."""
    needed = next(n for n in range(2, 10**6) if round(n * config.val_fraction) >= 1)
    for label in config.classes:
        training = frame[(frame["label"] == label) & (frame["split"] != "test")]
        for role in ("train", "val"):
            if (training["split"] == role).any():
                continue
            groups = training["group"].nunique()
            copies = (
                f" ({groups} distinct: copies of one scan stay on one side of the split)"
                if groups < len(training)
                else ""
            )
            raise DataError(
                f"no {role} scan of class {label}: it has {len(training)} usable Training scan(s){copies}, "
                f"and with data.val_fraction={config.val_fraction:g} a class needs at least {needed} "
                f"distinct ones to have both train and val scans. Add Training scans of {label}, or raise "
                "data.val_fraction."
            )


def inspect_all(
    paths: list[str | Path],
    limits: ImageLimits,
    *,
    workers: int | None,
    progress: bool,
    desc: str = "validate: hashing and checking",
) -> list[dict[str, Any]]:
    """`inspect_file` of every path, in worker processes; in the order given."""
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    paths = [str(p) for p in paths]
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress)
    with bar:
        if workers <= 1:
            results = []
            for path in paths:
                results.append(inspect_file(path, limits))
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for info in pool.map(inspect_file, paths, [limits] * len(paths), chunksize=32):
                results.append(info)
                bar.update()
            return results


def _duplicates_and_splits(
    frame: pd.DataFrame, prints: np.ndarray, config: DataConfig
) -> tuple[dict[str, Any], pd.DataFrame]:
    is_train = (frame["split"] == "train").to_numpy()
    train_idx, test_idx = np.flatnonzero(is_train), np.flatnonzero(~is_train)
    hashes = frame["sha256"].to_numpy()

    # Groups over all images: linked when byte-identical or near-identical.
    sets = DisjointSets(len(frame))
    first_of_hash: dict[str, int] = {}
    for i, digest in enumerate(hashes):
        sets.union(i, first_of_hash.setdefault(digest, i))
    for rows, cols, _ in near_pairs(prints, None, config.near_duplicate_threshold):
        for i, j in zip(rows.tolist(), cols.tolist()):
            sets.union(i, j)
    groups = sets.groups()

    train_hashes = set(hashes[train_idx])
    exact_in_train = np.array(
        [split == "test" and digest in train_hashes for split, digest in zip(frame["split"], hashes)]
    )
    near_in_train = np.zeros(len(frame), dtype=bool)
    best, _ = best_match(prints[test_idx], prints[train_idx])
    near_in_train[test_idx] = (best >= config.near_duplicate_threshold) & ~exact_in_train[test_idx]

    # val: whole groups of Training images, stratified by class.
    split = frame["split"].to_numpy().copy()
    train_groups = groups[train_idx]
    is_val = grouped_stratified_val(
        frame["label"].to_numpy()[train_idx].tolist(),
        train_groups,
        fraction=config.val_fraction,
        seed=config.split_seed,
    )
    split[train_idx[is_val]] = "val"
    frame = frame.assign(split=split, group=groups, exact_in_train=exact_in_train, near_in_train=near_in_train)
    frame = frame.sort_values(["split", "label", "path"], kind="stable").reset_index(drop=True)

    conflicts = []
    for group, members in frame.groupby("group"):
        if members["label"].nunique() > 1:
            conflicts.append(
                {
                    "labels": sorted(members["label"].unique()),
                    "paths": members["path"].tolist()[:10],
                    "size": len(members),
                }
            )
    report = {
        "exact_duplicates_in_train": int(len(train_idx) - len(train_hashes)),
        "near_duplicate_groups_in_train": int(sum(c > 1 for c in Counter(train_groups.tolist()).values())),
        "test_exact_in_train": int(exact_in_train.sum()),
        "test_near_in_train": int(near_in_train.sum()),
        "test_leak_free": int(len(test_idx) - exact_in_train.sum() - near_in_train.sum()),
        "label_conflicts": len(conflicts),
        "label_conflict_groups": conflicts[:50],
        "near_duplicate_threshold": config.near_duplicate_threshold,
    }
    return report, frame


SIZE_SHIFT_WARN = 0.5  # a class with fewer of its Testing scans at a size its Training scans have is flagged


def image_size_shift(frame: pd.DataFrame, classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per class: the image sizes of its Training scans (how many, the commonest and its share) and the share of its
    Testing scans at one of those sizes (`size_seen_in_training`): a low share says Testing's scans of the class
    come from other sources or scanners than Training's, and its recall there will likely be lower."""
    training, test = frame[frame["split"] != "test"], frame[frame["split"] == "test"]
    seen = size_seen_in_training(test, training)
    shift = {}
    for label in classes:
        sizes = Counter(
            f"{w}x{h}" for w, h in training.loc[training["label"] == label, ["width", "height"]].itertuples(index=False)
        )
        top, top_count = sizes.most_common(1)[0] if sizes else ("", 0)
        in_class = (test["label"] == label).to_numpy()
        shift[label] = {
            "training_sizes": len(sizes),
            "training_top_size": top,
            "training_top_share": top_count / max(1, sum(sizes.values())),
            "test_n": int(in_class.sum()),
            "test_size_seen": float(seen[in_class].mean()) if in_class.any() else None,
        }
    return shift


def size_shift_warnings(shift: dict[str, dict[str, Any]]) -> list[str]:
    """One line per class whose Testing scans mostly have image sizes its Training scans never have."""

    def sizes(s: dict[str, Any]) -> str:
        if s["training_sizes"] == 1:
            return f"all at {s['training_top_size']}"
        return f"{s['training_sizes']} sizes, {s['training_top_share']:.0%} at {s['training_top_size']}"

    return [
        f"Testing's {label} scans: {s['test_size_seen']:.0%} of {s['test_n']} have an image size found among "
        f"Training's {label} scans ({sizes(s)}): the others likely come from other sources or scanners, from "
        f"which Training holds no {label} scan. Expect a lower recall on them (evaluate reports Testing by "
        f"image size); add Training scans of {label} from those sources if you have them."
        for label, s in shift.items()
        if s["test_size_seen"] is not None and s["test_size_seen"] < SIZE_SHIFT_WARN
    ]


def _counts(
    frame: pd.DataFrame, problems: list[dict[str, str]], ignored: list[str], classes: list[str]
) -> dict[str, Any]:
    role = frame["split"]
    per_class = {
        s: {c: int(((role == s) & (frame["label"] == c)).sum()) for c in classes} for s in ("train", "val", "test")
    }
    pixels = frame["width"] * frame["height"]
    order = np.argsort(pixels.to_numpy(), kind="stable")
    smallest, median, largest = (frame.iloc[order[k]] for k in (0, len(order) // 2, -1))
    return {
        "n_train": int((role != "test").sum()),  # everything from Training/, val included
        "n_train_fit": int((role == "train").sum()),
        "n_val": int((role == "val").sum()),
        "n_test": int((role == "test").sum()),
        "n_excluded": len(problems),
        "per_class": per_class,
        "image_modes": dict(sorted(Counter(frame["mode"]).items())),
        "image_sizes": {
            name: f"{int(row['width'])}x{int(row['height'])}"
            for name, row in (("min", smallest), ("median", median), ("max", largest))
        },
        "excluded": problems,
        "ignored_files": ignored[:100],
    }
