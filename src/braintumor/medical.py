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

The class folders take one 2-D scan per file, so `single_picture` refuses multi-frame files and volumes there.
Every limit is checked before pixels are decoded: pixels per picture and per file (data.max_image_pixels).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from braintumor.imaging import ImageProblem, decode_grayscale

DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
PERCENTILE_WINDOW = (0.5, 99.5)  # the fallback window: robust to a few hot pixels, unlike min-max
# pydicom names a decoder plugin; pip installs it under this name.
PIP_NAMES = {"gdcm": "python-gdcm"}
_GZIP_MAGIC = b"\x1f\x8b"
MAX_NIFTI_OFFSET = 64 * 2**20  # header extensions (DICOM tags, JSON sidecars) are kilobytes; 64 MiB is generous


@dataclass(frozen=True)
class Pictures:
    """The 2-D pictures in one file, each an 8-bit grayscale (mode L) image ready for `prepare_square`."""

    images: list[Image.Image]
    numbers: list[int]  # the frame (DICOM), axial slice (NIfTI, inferior to superior) or 0 (one picture)
    kind: str  # "image" (what Pillow reads), "dicom" or "nifti"
    description: str  # what was read, e.g. "DICOM MONOCHROME2 12-bit, 3 frames"

    @property
    def is_volume(self) -> bool:
        return self.kind == "nifti"


# ---- which reader --------------------------------------------------------------------------------------------

def has_dicom_preamble(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then `DICM`."""
    return data[128:132] == b"DICM"


def is_medical_name(path: Path) -> bool:
    """Is this file, by its name, a DICOM or NIfTI scan? Extension-less and UID-named files (`IM0001`,
    `1.2.840.113619.2.55.3.12`, as scanners and PACS export them) count when they carry the DICOM preamble."""
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES + NIFTI_SUFFIXES):
        return True
    if path.suffix == "" or path.suffix[1:].isdigit():
        try:
            with open(path, "rb") as fh:
                return has_dicom_preamble(fh.read(132))
        except OSError:
            return False
    return False


def kind_of(data: bytes, name: str = "") -> str | None:
    """"dicom", "nifti" or None (a format for Pillow), from the bytes (and, for DICOM without preamble, `.dcm`)."""
    if has_dicom_preamble(data) or name.lower().endswith(DICOM_SUFFIXES):
        return "dicom"
    if _nifti_header_bytes(data) is not None:
        return "nifti"
    return None


def read_pictures(source: str | os.PathLike | bytes, *, max_pixels: int, draft: int | None = None) -> Pictures:
    """Every 2-D picture in a file (a path or its bytes): one for raster images and single-frame DICOM, one per
    frame of a multi-frame DICOM, one per axial slice of a NIfTI volume. Raises ImageProblem."""
    name = "" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    kind = kind_of(data, name)
    if kind == "dicom":
        return read_dicom(data, max_pixels=max_pixels)
    if kind == "nifti":
        return read_nifti(data, max_pixels=max_pixels)
    image = decode_grayscale(data, max_pixels=max_pixels, draft=draft)
    return Pictures([image], [0], "image", "image")


def single_picture(data: bytes, kind: str, *, max_pixels: int) -> Image.Image:
    """The one picture of a DICOM or NIfTI file, for the class folders (one labelled 2-D scan per file).

    The returned mode-L image carries `source_size` and `source_mode` in `info`, as `imaging.open_checked` sets
    them. A multi-frame DICOM or a volume with several slices is refused: a class folder's label is for one slice,
    and the other frames of a series need not show what it names."""
    pictures = read_dicom(data, max_pixels=max_pixels) if kind == "dicom" else read_nifti(data, max_pixels=max_pixels)
    if len(pictures.images) > 1:
        what = "frames" if kind == "dicom" else "axial slices"
        raise ImageProblem(f"{pictures.description}: {len(pictures.images)} {what} in one file, but a class folder "
                           "takes one 2-D slice per file (its label must be true of every picture, and the other "
                           f"{what} of a series need not show the lesion). Save the slices that show it as "
                           "single-frame files; `braintumor predict` reads the whole file, one prediction per "
                           f"{what[:-1] if kind == 'dicom' else 'slice'}.")
    image = pictures.images[0]
    image.info["source_size"], image.info["source_mode"] = image.size, pictures.description
    return image


# ---- DICOM ---------------------------------------------------------------------------------------------------

def read_dicom(data: bytes, *, max_pixels: int) -> Pictures:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_dicom_preamble(data))
    except Exception as exc:  # pydicom raises many types for malformed files
        raise ImageProblem(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        what = ds.get("SOPClassUID")
        raise ImageProblem(f"a DICOM file without pixel data ({getattr(what, 'name', what) or 'no SOP class'}): "
                           "not an image")
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
    except Exception as exc:
        raise ImageProblem(f"a DICOM image without valid Rows, Columns or Number of Frames ({exc})") from None
    _check_pixels(rows, columns, frames, max_pixels, unit="frames")
    _check_decoder(ds)
    try:
        pixels = ds.pixel_array  # (R, C), (F, R, C), (R, C, 3) or (F, R, C, 3); YBR arrives as RGB
    except Exception as exc:
        raise ImageProblem(f"cannot decode the DICOM pixel data ({type(exc).__name__}: {exc})") from None
    samples = int(ds.get("SamplesPerPixel") or 1)
    if frames == 1:
        pixels = pixels[None]  # (1, R, C[, 3])
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        images = [Image.fromarray(_monochrome(ds, frame, i, photometric), mode="L") for i, frame in enumerate(pixels)]
    else:
        images = [_colour_to_gray(ds, frame, photometric) for frame in pixels]
    signed = " signed" if ds.get("PixelRepresentation") == 1 else ""
    description = f"DICOM {photometric} {ds.get('BitsStored', ds.get('BitsAllocated', '?'))}-bit{signed}"
    if frames > 1:
        description += f", {frames} frames"
    return Pictures(images, list(range(frames)), "dicom", description)


def _check_decoder(ds) -> None:
    """Refuse, naming the transfer syntax and what decodes it, pixel data that no installed plugin can decode."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageProblem(f"DICOM transfer syntax {syntax.name} ({syntax}) has no pixel data decoder in pydicom; "
                           "convert the file to an uncompressed syntax (e.g. `gdcmconv --raw`)") from None
    if decoder.is_available:
        return
    options = []
    for line in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        plugin, _, needs = line.partition(" - requires ")
        names = [re.split(r"[<>=!~\s]", need.strip())[0] for need in needs.split(" and ") if need.strip()]
        packages = [PIP_NAMES.get(name, name) for name in names]
        options.append(f"{plugin} (pip install {' '.join(packages)})" if packages else plugin)
    raise ImageProblem(f"DICOM compressed as {syntax.name} ({syntax}): no decoder for it is installed here; "
                       f"install one of: {'; '.join(options)}")


def _monochrome(ds, frame: np.ndarray, index: int, photometric: str) -> np.ndarray:
    """One frame's stored values -> (R, C) uint8: modality rescale, VOI window (or percentiles), inversion."""
    values = frame.astype(np.float64)
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        values = apply_modality_lut(frame, ds).astype(np.float64)
    else:
        slope = _frame_attribute(ds, index, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_attribute(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
        values = values * float(1.0 if slope is None else slope) + float(0.0 if intercept is None else intercept)
    _check_finite(values)
    window = _voi_window(ds, index)
    if window:
        gray = np.round(apply_window(values, *window) * 255.0).astype(np.uint8)
    elif frame.dtype == np.uint8 and np.array_equal(values, frame):  # 8-bit, not rescaled: shown as stored, as a
        gray = frame  # PNG of the same pixels would be
    else:
        gray = np.round(percentile_window(values) * 255.0).astype(np.uint8)
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _voi_window(ds, index: int) -> tuple[float, float, str] | None:
    """(center, width, function) of the frame's first VOI window, or None when it has none that is valid."""
    center = _frame_attribute(ds, index, "FrameVOILUTSequence", "WindowCenter")
    width = _frame_attribute(ds, index, "FrameVOILUTSequence", "WindowWidth")
    function = _frame_attribute(ds, index, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR"
    if center is None or width is None:
        return None
    try:  # multi-valued: alternative views; the first is the default one
        center, width = float(_first(center)), float(_first(width))
    except (TypeError, ValueError):
        return None
    function = str(function).strip().upper()
    valid = np.isfinite(center) and np.isfinite(width) and (width >= 1 if function == "LINEAR" else width > 0)
    return (center, width, function) if valid and function in ("LINEAR", "LINEAR_EXACT", "SIGMOID") else None


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2 and C.11.2.1.3) to [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width == 1:  # LINEAR with width 1 is a threshold at center - 0.5
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def percentile_window(values: np.ndarray) -> np.ndarray:
    """The 0.5th-99.5th percentiles to [0, 1] (min-max when they are equal: a near-constant picture)."""
    low, high = np.percentile(values, PERCENTILE_WINDOW)
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _frame_attribute(ds, index: int, sequence: str, keyword: str):
    """An attribute for frame `index`: its per-frame functional group, the shared one, or the top level.

    Enhanced multi-frame files (Enhanced MR) keep the rescale and the window there, possibly frame by frame."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for groups in ((per_frame[index] if per_frame and index < len(per_frame) else None),
                   (shared[0] if shared else None)):
        items = groups.get(sequence) if groups is not None else None
        if items and keyword in items[0]:
            return items[0][keyword].value
    return ds.get(keyword)


def _first(value):
    return value[0] if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else value


def _colour_to_gray(ds, frame: np.ndarray, photometric: str) -> Image.Image:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        frame = apply_color_lut(frame, ds)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ImageProblem(f"DICOM photometric interpretation {photometric!r} with "
                           f"{ds.get('SamplesPerPixel')} samples per pixel is not supported; "
                           "use MONOCHROME1, MONOCHROME2, RGB, YBR or PALETTE COLOR")
    if frame.dtype != np.uint8:  # 16-bit colour: scale the stored range to 8 bits
        top = float(2 ** int(ds.get("BitsStored") or 16) - 1) if photometric != "PALETTE COLOR" else 65535.0
        frame = np.round(np.clip(frame.astype(np.float64) / top, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(frame), mode="RGB").convert("L")


# ---- NIfTI ---------------------------------------------------------------------------------------------------

def read_nifti(data: bytes, *, max_pixels: int) -> Pictures:
    import nibabel as nib

    head = _nifti_header_bytes(data)
    if head is None:
        raise ImageProblem("not a NIfTI-1 or NIfTI-2 file (no NIfTI header)")
    version, header_class, image_class = ((1, nib.Nifti1Header, nib.Nifti1Image) if _sizeof_hdr(head) == 348
                                          else (2, nib.Nifti2Header, nib.Nifti2Image))
    if head[344:348] == b"ni1\x00":
        raise ImageProblem("a NIfTI header whose voxels are in a separate .img file; save it as one .nii file")
    try:
        header = header_class(binaryblock=head[:header_class.template_dtype.itemsize])
        shape = tuple(int(n) for n in header.get_data_shape())
        itemsize = header.get_data_dtype().itemsize
        offset = int(header["vox_offset"])
    except Exception as exc:
        raise ImageProblem(f"unreadable NIfTI-{version} header ({type(exc).__name__}: {exc})") from None
    shape = _volume_shape(shape)
    if len(shape) > 3:
        raise ImageProblem(f"a {len(shape)}-D NIfTI image {'x'.join(map(str, shape))}: give one 3-D volume "
                           "(e.g. the first of a series: `fslroi in.nii.gz out.nii.gz 0 1`)")
    columns, rows, slices = (shape + (1, 1))[:3]
    _check_pixels(rows, columns, slices, max_pixels, unit="slices")
    if not 0 <= offset <= MAX_NIFTI_OFFSET:  # the header and its extensions come first; bounds what is inflated
        raise ImageProblem(f"NIfTI vox_offset {offset:,} is outside 0..{MAX_NIFTI_OFFSET:,}: a corrupt header")
    needed = offset + int(np.prod(shape)) * itemsize
    raw = _bounded_bytes(data, needed)
    if len(raw) < needed:
        raise ImageProblem(f"truncated NIfTI file: the header promises {needed:,} bytes, the file holds "
                           f"{len(raw):,}")
    try:
        image = nib.as_closest_canonical(image_class.from_bytes(raw))  # RAS+: the third axis runs up the body
        volume = np.asarray(image.get_fdata(dtype=np.float32))  # scl_slope / scl_inter applied
        zooms = [float(z) for z in image.header.get_zooms()[:2]]
    except Exception as exc:
        raise ImageProblem(f"cannot read the NIfTI voxels ({type(exc).__name__}: {exc})") from None
    volume = volume.reshape(volume.shape[:3] if volume.ndim >= 3 else volume.shape + (1,) * (3 - volume.ndim))
    _check_finite(volume)
    low, high = float(header["cal_min"]), float(header["cal_max"])
    shown = (np.clip((volume - low) / (high - low), 0, 1) if np.isfinite([low, high]).all() and high > low
             else percentile_window(volume))
    gray = np.round(shown * 255.0).astype(np.uint8)
    images = [_axial_picture(gray[:, :, k], zooms) for k in range(gray.shape[2])]
    description = f"NIfTI-{version} {'x'.join(map(str, gray.shape))} {header.get_data_dtype()}"
    return Pictures(images, list(range(len(images))), "nifti", description)


def _axial_picture(plane: np.ndarray, zooms: list[float]) -> Image.Image:
    """An (X, Y) RAS+ plane -> the image radiology shows: rows anterior to posterior, columns patient's right to
    left; resampled to square pixels when the voxels are not square in-plane."""
    image = Image.fromarray(np.ascontiguousarray(plane[::-1, ::-1].T), mode="L")
    dx, dy = zooms if all(z > 0 and np.isfinite(z) for z in zooms) else (1.0, 1.0)
    if abs(dx - dy) > 0.01 * max(dx, dy):
        scale = min(dx, dy)
        width, height = image.size
        image = image.resize((max(1, round(width * dx / scale)), max(1, round(height * dy / scale))), Image.BILINEAR)
    return image


def _volume_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing dimensions of size 1 beyond the third ((X, Y, Z, 1) is a 3-D volume)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _sizeof_hdr(head: bytes) -> int:
    little, big = int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")
    return little if little in (348, 540) else big


def _nifti_header_bytes(data: bytes) -> bytes | None:
    """The first 540 bytes (decompressed for .nii.gz) when they start a NIfTI-1 or NIfTI-2 file, else None."""
    head = data[:540]
    if data[:2] == _GZIP_MAGIC:
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 540)
        except zlib.error:
            return None
    size = _sizeof_hdr(head) if len(head) >= 348 else 0
    if size == 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return head
    if size == 540 and head[4:8] == b"n+2\x00":
        return head
    return None


def _bounded_bytes(data: bytes, needed: int) -> bytes:
    """The file's bytes, decompressed for .nii.gz, never more than `needed` (a gzip bomb stops there)."""
    if data[:2] != _GZIP_MAGIC:
        return data[:needed]
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            return stream.read(needed)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageProblem(f"corrupt gzip stream in the NIfTI file ({type(exc).__name__}: {exc})") from None


# ---- limits shared by both -----------------------------------------------------------------------------------

def _check_pixels(rows: int, columns: int, count: int, max_pixels: int, *, unit: str) -> None:
    if rows < 1 or columns < 1 or count < 1:
        raise ImageProblem(f"{columns}x{rows} picture(s), {count} {unit}: no pixels")
    if rows * columns > max_pixels:
        raise ImageProblem(f"{columns}x{rows} = {rows * columns:,} pixels is over the limit data.max_image_pixels="
                           f"{max_pixels:,} (a possible decompression bomb); raise the limit if the scan is real")
    if rows * columns * count > max_pixels:
        raise ImageProblem(f"{count} {unit} of {columns}x{rows} = {rows * columns * count:,} pixels in one file, over "
                           f"the limit data.max_image_pixels={max_pixels:,}; raise the limit if the scan is real")


def _check_finite(values: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageProblem(f"{bad:,} of {values.size:,} pixels are not finite numbers (NaN or infinity); "
                           "replace them (e.g. with the background value) and save the scan again")
