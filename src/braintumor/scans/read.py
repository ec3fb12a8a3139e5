"""Reading one scan safely, the one way a file becomes pixels: which reader a file needs (Pillow, pydicom or
nibabel, by its bytes), the limits checked before anything is decoded, and every way a file can be broken turned
into an `ImageProblem` with a reason.

Validation, the training cache, evaluation, `braintumor predict`, the page and the served model all read through
`read_pictures` (every picture of a file) or `open_checked` / `decode_grayscale` (the one picture of a class
folder's file), so a scan is turned into pixels one way everywhere.

- **DICOM** (dicom.py): Rescale Slope/Intercept (the frame's own, for enhanced multi-frame files), then the file's
  VOI window (Window Center/Width, its VOI LUT Function) when it has one, else a robust percentile window (0.5th-
  99.5th of the frame; 8-bit data that needs no rescale is shown as stored, as a PNG of it would be); MONOCHROME1 is
  inverted (its low values are white); RGB, YBR and palette colour become grayscale. VOI LUT tables are not
  applied. A multi-frame file is one picture per frame. A compressed transfer syntax without an installed decoder is
  refused naming the syntax and the packages that decode it.
- **NIfTI** (`.nii`, `.nii.gz`, nifti.py): the volume is turned to RAS+ (nibabel's closest canonical orientation),
  scaled by scl_slope/scl_inter, windowed by its cal_min/cal_max when set, else by the volume's 0.5th-99.5th
  percentiles, and cut into axial slices, inferior to superior, shown as radiology shows them (anterior up,
  patient's right on the left), with non-square voxels resampled to square pixels.
- **Everything else** (raster.py): what Pillow reads, in its accepted formats only.

The class folders take one 2-D scan per file, so `open_checked` refuses multi-frame files and volumes there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from braintumor.scans.dicom import has_dicom_preamble, read_dicom
from braintumor.scans.limits import ImageLimits, ImageProblem, read_checked
from braintumor.scans.nifti import header_bytes, read_nifti
from braintumor.scans.pictures import Pictures, library_warnings
from braintumor.scans.raster import IMAGE_SUFFIXES, open_raster, to_grayscale

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Read before Pillow is asked, by pydicom and nibabel, with the same limits.
MEDICAL_FORMATS = ("DICOM", "NIfTI")
# Files that operating systems and tools drop into folders; never data, never reported.
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "._.ds_store"})


def is_candidate(path: Path, head: Callable[[], bytes] | None = None) -> bool:
    """Should this file be read as a scan? (Hidden and OS junk files are skipped silently.) `head()` gives the
    file's first bytes when `path` is not a file on disk (a zip member); else an extension-less name is opened."""
    name = path.name
    if name.startswith(".") or name.lower() in IGNORED_NAMES:
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or is_medical_name(path, head)


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
    if header_bytes(data) is not None:
        return "nifti"
    return None


def read_pictures(
    source: str | os.PathLike | bytes,
    *,
    limits: ImageLimits,
    draft: int | None = None,
    keep: Callable[[int], list[int]] | None = None,
    name: str = "",
) -> Pictures:
    """Every 2-D picture in a file (a path or its bytes): one for raster images and single-frame DICOM, one per
    frame of a multi-frame DICOM, one per axial slice of a NIfTI volume. Raises ImageProblem.

    `keep(count)` picks the frames of a multi-frame DICOM to decode (the others never are); a volume is read whole
    (its window is the whole volume's). `name`: the file's name for what pydicom and nibabel say about it, when
    `source` is its bytes."""
    data, name = _file_bytes(source, limits, name)
    kind = kind_of(data, name)
    if kind is None:
        image = to_grayscale(open_raster(data, limits=limits, draft=draft, also=MEDICAL_FORMATS))
        return Pictures([image], [0], "image", "image")
    return _read_medical(data, kind, limits=limits, name=name, keep=keep)


def open_checked(
    source: str | os.PathLike | bytes, *, limits: ImageLimits, draft: int | None = None, name: str = ""
) -> Image.Image:
    """The one picture of a file, for the class folders (one labelled 2-D scan per file); or raise ImageProblem.

    A raster image comes in its own mode (validation reports it), a DICOM or NIfTI picture in mode L; either
    carries `source_size` and `source_mode` in `info`. A multi-frame DICOM or a volume with several slices is
    refused: a class folder's label is for one slice, and the other frames of a series need not show what it names.
    """
    data, name = _file_bytes(source, limits, name)
    kind = kind_of(data, name)
    if kind is None:
        return open_raster(data, limits=limits, draft=draft, also=MEDICAL_FORMATS)
    pictures = _read_medical(data, kind, limits=limits, name=name)
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


def decode_grayscale(
    source: str | os.PathLike | bytes, *, limits: ImageLimits, draft: int | None = None
) -> Image.Image:
    """The one picture of a class folder's file as 8-bit grayscale: checked open, full decode, then mode L."""
    return to_grayscale(open_checked(source, limits=limits, draft=draft))


def _file_bytes(source: str | os.PathLike | bytes, limits: ImageLimits, name: str) -> tuple[bytes, str]:
    """The file's bytes, its size checked before they are read, and the name its readers report it by."""
    data = read_checked(source, max_file_bytes=limits.max_file_bytes)
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    return data, name if isinstance(source, (bytes, bytearray)) else os.fspath(source)


def _read_medical(
    data: bytes, kind: str, *, limits: ImageLimits, name: str, keep: Callable[[int], list[int]] | None = None
) -> Pictures:
    """pydicom or nibabel, with what they warn about as one log line naming the file."""
    if kind == "dicom":
        with library_warnings("pydicom", name):
            return read_dicom(data, limits=limits, keep=keep)
    with library_warnings("nibabel", name):
        return read_nifti(data, limits=limits)
