"""DICOM and NIfTI scans: pydicom and nibabel turn them into the 8-bit grayscale pictures every other format becomes.

After this module, a DICOM frame or a NIfTI slice is a mode-L image like a decoded JPEG, and goes through the same
head crop, intensity step and presets (preprocess.py, transforms.py): one code path for training, evaluation,
`braintumor predict` and the served model.

- **DICOM**: Rescale Slope/Intercept (the frame's own, for enhanced multi-frame files), then the file's VOI window
  (Window Center/Width, its VOI LUT Function) when it has one, else a robust percentile window (0.5th-99.5th of the
  frame; 8-bit data that needs no rescale is shown as stored, as a PNG of it would be); MONOCHROME1 is inverted
  (its low values are white); RGB, YBR and palette colour become grayscale. VOI LUT tables are not applied. A
  multi-frame file is one picture per frame. A compressed transfer syntax without an installed decoder is refused
  naming the syntax and the packages that decode it.
- **NIfTI** (`.nii`, `.nii.gz`): the volume is turned to RAS+ (nibabel's closest canonical orientation), scaled by
  scl_slope/scl_inter, windowed by its cal_min/cal_max when set, else by the volume's 0.5th-99.5th percentiles,
  and cut into axial slices, inferior to superior, shown as radiology shows them (anterior up, patient's right on
  the left), with non-square voxels resampled to square pixels.

The readers are dicom.py and nifti.py; this module says which one a file needs and holds what they share. The
class folders take one 2-D scan per file, so `single_picture` refuses multi-frame files and volumes there.
Every limit is checked before pixels are decoded: the file's size (data.max_file_bytes), each picture's pixels and
aspect ratio (data.max_image_pixels, data.max_aspect_ratio) and the pixels of all of a file's pictures together
(data.max_image_pixels again).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from braintumor.errors import escaped
from braintumor.imaging import ImageLimits, ImageProblem, check_dimensions, decode_grayscale, read_checked
from braintumor.library_notes import notes

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
log = logging.getLogger(__name__)
PERCENTILE_WINDOW = (0.5, 99.5)  # the fallback window: robust to a few hot pixels, unlike min-max
DECODED_BYTES_PER_PIXEL = 4  # what a file's decoded values may take, per pixel of data.max_image_pixels


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


# ---- which reader --------------------------------------------------------------------------------------------


def has_dicom_preamble(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then `DICM`."""
    return data[128:132] == b"DICM"


def is_medical_name(path: Path, head: Callable[[], bytes] | None = None) -> bool:
    """Is this file, by its name, a DICOM or NIfTI scan? Extension-less and UID-named files (`IM0001`,
    `1.2.840.113619.2.55.3.12`, as scanners and PACS export them) count when they carry the DICOM preamble: in
    `head()`, the first bytes of a file that is not on disk (a zip member), else in the file at `path`."""
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES + NIFTI_SUFFIXES):
        return True
    if (path.suffix == "" or path.suffix[1:].isdigit()) and head is not None:
        return has_dicom_preamble(head())
    if path.suffix == "" or path.suffix[1:].isdigit():
        try:
            with open(path, "rb") as fh:
                return has_dicom_preamble(fh.read(132))
        except OSError:
            return False
    return False


def kind_of(data: bytes, name: str = "") -> str | None:
    """ "dicom", "nifti" or None (a format for Pillow), from the bytes (and, for DICOM without preamble, `.dcm`)."""
    if has_dicom_preamble(data) or name.lower().endswith(DICOM_SUFFIXES):
        return "dicom"
    from braintumor.nifti import header_bytes  # (dicom.py and nifti.py import this module)

    if header_bytes(data) is not None:
        return "nifti"
    return None


def read_pictures(
    source: str | os.PathLike | bytes,
    *,
    limits: ImageLimits,
    draft: int | None = None,
    keep: Callable[[int], list[int]] | None = None,
) -> Pictures:
    """Every 2-D picture in a file (a path or its bytes): one for raster images and single-frame DICOM, one per
    frame of a multi-frame DICOM, one per axial slice of a NIfTI volume. Raises ImageProblem.

    `keep(count)` picks the frames of a multi-frame DICOM to decode (the others never are); a volume is read whole
    (its window is the whole volume's)."""
    name = "" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    data = read_checked(source, max_file_bytes=limits.max_file_bytes)  # its size is checked before reading
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    kind = kind_of(data, name)
    if kind == "dicom":
        from braintumor.dicom import read_dicom

        with library_warnings("pydicom", name):
            pictures = read_dicom(data, limits=limits, keep=keep)
        return pictures
    if kind == "nifti":
        from braintumor.nifti import read_nifti

        with library_warnings("nibabel", name):
            pictures = read_nifti(data, limits=limits)
        return pictures
    image = decode_grayscale(data, limits=limits, draft=draft)
    return Pictures([image], [0], "image", "image")


def single_picture(data: bytes, kind: str, *, limits: ImageLimits, name: str = "") -> Image.Image:
    """The one picture of a DICOM or NIfTI file, for the class folders (one labelled 2-D scan per file).

    The returned mode-L image carries `source_size` and `source_mode` in `info`, as `imaging.open_checked` sets
    them. A multi-frame DICOM or a volume with several slices is refused: a class folder's label is for one slice,
    and the other frames of a series need not show what it names."""
    from braintumor.dicom import read_dicom
    from braintumor.nifti import read_nifti

    with library_warnings("pydicom" if kind == "dicom" else "nibabel", name):
        pictures = read_dicom(data, limits=limits) if kind == "dicom" else read_nifti(data, limits=limits)
    if len(pictures.images) > 1:
        what = "frames" if kind == "dicom" else "axial slices"
        raise ImageProblem(
            f"{pictures.description}: {len(pictures.images)} {what} in one file, but a class folder "
            "takes one 2-D slice per file (its label must be true of every picture, and the other "
            f"{what} of a series need not show the lesion). Save the slices that show it as "
            "single-frame files; `braintumor predict` reads the whole file, one prediction per "
            f"{what[:-1] if kind == 'dicom' else 'slice'}."
        )
    image = pictures.images[0]
    image.info["source_size"], image.info["source_mode"] = image.size, pictures.description
    return image


@contextlib.contextmanager
def library_warnings(library: str, name: str = "") -> Iterator[None]:
    """pydicom's and nibabel's warnings and log records about one file (library_notes.notes), as one log line
    (logger braintumor.medical), also when the file is refused: not stderr lines with the library's source paths."""
    said: list[str] = []
    try:
        with notes() as said:
            yield
    finally:
        if said:
            where = f" reading {escaped(name)}" if name else ""
            log.warning("%s%s: %s", library, where, "; ".join(said)[:500])


# ---- shared by both readers ---------------------------------------------------------------------------------


def percentile_window(values: np.ndarray) -> np.ndarray:
    """The 0.5th-99.5th percentiles to [0, 1] (min-max when they are equal: a near-constant picture)."""
    low, high = np.percentile(values, PERCENTILE_WINDOW)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def check_pixels(rows: int, columns: int, count: int, limits: ImageLimits, *, unit: str) -> None:
    """The number of pictures, each picture's pixels and aspect ratio, then all of the file's pictures together
    (before decoding)."""
    if count < 1:
        raise ImageProblem(f"{count} {unit}: no pixels")
    if count > limits.max_frames:
        raise ImageProblem(
            f"{count:,} {unit} of {columns}x{rows} in one file, over the limit data.max_frames="
            f"{limits.max_frames:,}; refused before decoding. Export the {unit} you need (or raise "
            "the limit if the scan is real)"
        )
    if count + limits.frames_used > limits.max_frames:
        raise ImageProblem(
            f"{count:,} {unit} after the {limits.frames_used:,} pictures of the request's earlier rows"
            f": over data.max_frames={limits.max_frames:,} pictures in one request; refused before "
            "decoding. Send fewer rows (or frames) per request"
        )
    check_dimensions(columns, rows, limits)
    if rows * columns * count > limits.max_pixels:
        raise ImageProblem(
            f"{count} {unit} of {columns}x{rows} = {rows * columns * count:,} pixels in one file, over "
            f"the limit data.max_image_pixels={limits.max_pixels:,}; raise the limit if the scan is "
            "real"
        )


def check_decoded_bytes(values: int, bytes_each: float, limits: ImageLimits, *, what: str) -> None:
    """The bytes a file's pixel values take once decoded: at most 4 bytes (a float32) x data.max_image_pixels, so
    that a float64 or 16-bit colour file is held to the memory of the pixel limit's float32 (before decoding)."""
    decoded, bound = int(values * bytes_each), DECODED_BYTES_PER_PIXEL * limits.max_pixels
    if decoded > bound:
        raise ImageProblem(
            f"{what} = {decoded:,} bytes once decoded, over {DECODED_BYTES_PER_PIXEL} bytes x "
            f"data.max_image_pixels = {bound:,}; refused before decoding. Save it with fewer "
            "bytes per value (float32, int16) or raise data.max_image_pixels if the scan is real"
        )


def check_finite(values: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageProblem(
            f"{bad:,} of {values.size:,} pixels are not finite numbers (NaN or infinity); "
            "replace them (e.g. with the background value) and save the scan again"
        )
