"""Decode each scan once: a cache of (S, S) uint8 images, reused across epochs and runs.

The cache file is keyed by the manifest rows it holds (path and content hash) and the preprocessing settings (size,
head crop, intensity), so changing either makes a new file, and an unchanged dataset is never decoded twice.
Augmentation happens later, per batch, on these arrays (transforms.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from braintumor.errors import DataError
from braintumor.fileio import atomic_path
from braintumor.progress import progress_bar
from braintumor.scans.limits import ImageLimits, problem_of
from braintumor.scans.preprocess import ScanPrep, prepare_image
from braintumor.scans.read import decode_grayscale

if TYPE_CHECKING:
    import pandas as pd

    from braintumor.scans.pictures import Pictures

log = logging.getLogger(__name__)
CACHE_VERSION = 3  # bump when decode_grayscale or prepare_image change what they produce


def load_image(source: str | os.PathLike | bytes, scan: ScanPrep, limits: ImageLimits) -> np.ndarray:
    """One scan (a file path or its bytes) -> (S, S) uint8: the input of every preset."""
    return prepare_image(decode_grayscale(source, limits=limits, draft=draft_size(scan)), scan)


def images_of(pictures: "Pictures", scan: ScanPrep) -> list[np.ndarray]:
    """Every picture of one file (scans.read.read_pictures: a DICOM's frames, a volume's slices) -> (S, S) uint8,
    each as `load_image` makes a one-picture file's."""
    return [prepare_image(image, scan) for image in pictures.images]


def draft_size(scan: ScanPrep) -> int:
    """JPEGs decode at a reduced scale still >= this per side: 2S when the head is cropped out of the frame after."""
    return 2 * scan.size if scan.head_crop else scan.size


def cache_key(frame: "pd.DataFrame", scan: ScanPrep) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}:{json.dumps(asdict(scan), sort_keys=True)}\n".encode())
    for path, sha in zip(frame["path"], frame["sha256"]):
        digest.update(f"{path}\t{sha}\n".encode())
    return digest.hexdigest()[:20]


def cached_images(
    frame: "pd.DataFrame",
    data_root: str | Path,
    scan: ScanPrep,
    cache_dir: str | Path,
    *,
    limits: ImageLimits,
    workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """(N, S, S) uint8 for the manifest rows in `frame` (memory-mapped from the cache file)."""
    # The file name is older than the word "images" here: kept, so that existing caches stay valid.
    target = Path(cache_dir) / "images" / f"squares-{scan.size}px-{cache_key(frame, scan)}.npy"
    if target.is_file():
        return np.load(target, mmap_mode="r")
    paths = [str(Path(data_root) / p) for p in frame["path"]]
    images = np.empty((len(paths), scan.size, scan.size), dtype=np.uint8)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = progress_bar(
        total=len(paths), desc=f"preparing scans at {scan.size}px (once, cached)", unit="img", disable=not progress
    )
    with bar, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(_decode_row, paths, [scan] * len(paths), [limits] * len(paths), chunksize=16)
        for i, (image, problem) in enumerate(results):
            if problem:
                raise DataError(
                    f"{paths[i]} can no longer be read ({problem}); it changed after the validate "
                    "stage ran. Rerun the pipeline: `dvc repro`."
                )
            images[i] = image
            bar.update()
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, images)
    log.info("cached %d prepared scans in %s", len(paths), target)
    return images


def _decode_row(path: str, scan: ScanPrep, limits: ImageLimits) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_image(path, scan, limits), None
    except Exception as exc:  # one file's problem, whatever it is, never a crash of the worker pool
        return None, problem_of(exc)


class ImageDataset(Dataset):
    """(images[i] as a (1, S, S) uint8 tensor, label index); images: (N, S, S) uint8, possibly memory-mapped.

    Batches stay uint8 until the presets (transforms.py) run on the training device, one batch at a time.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.images[index]))[None], int(self.labels[index])  # copied out of mmap


class IndexedTransform(Dataset):
    """`dataset`'s (image, label) as (transform(image[None], [index])[0], label), on the CPU one scan at a time: for
    a transform that depends on which scan it is given (transforms.ShiftedPreset), whatever the batch size."""

    def __init__(self, dataset: Dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[index]
        return self.transform(image[None], torch.tensor([index]))[0], label
