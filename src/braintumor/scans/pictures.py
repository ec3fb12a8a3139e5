"""The pictures every reader returns: 8-bit grayscale (mode L) images, one per frame or slice, and what the
DICOM and NIfTI readers share to get there (the fallback intensity window, their libraries' warnings as log lines).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from braintumor.errors import escaped
from braintumor.scans.library_notes import notes

log = logging.getLogger(__name__)
PERCENTILE_WINDOW = (0.5, 99.5)  # the fallback window: robust to a few hot pixels, unlike min-max


@dataclass(frozen=True)
class Pictures:
    """The 2-D pictures in one file, each an 8-bit grayscale (mode L) image ready for `prepare_image`."""

    images: list[Image.Image]
    numbers: list[int]  # the frame (DICOM), axial slice (NIfTI, inferior to superior) or 0 (one picture)
    kind: str  # "image" (what Pillow reads), "dicom" or "nifti"
    description: str  # what was read, e.g. "DICOM MONOCHROME2 12-bit, 3 frames"
    total: int | None = None  # the pictures in the file, when only some were decoded (`predict --middle`)

    @property
    def is_volume(self) -> bool:
        return self.kind == "nifti"


def percentile_window(values: np.ndarray) -> np.ndarray:
    """The 0.5th-99.5th percentiles to [0, 1] (min-max when they are equal: a near-constant picture)."""
    low, high = np.percentile(values, PERCENTILE_WINDOW)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


@contextlib.contextmanager
def library_warnings(library: str, name: str = "") -> Iterator[None]:
    """pydicom's and nibabel's warnings and log records about one file (library_notes.notes), as one log line
    (logger braintumor.scans.pictures), also when the file is refused: not stderr lines with the library's source
    paths."""
    said: list[str] = []
    try:
        with notes() as said:
            yield
    finally:
        if said:
            where = f" reading {escaped(name)}" if name else ""
            log.warning("%s%s: %s", library, where, "; ".join(said)[:500])
