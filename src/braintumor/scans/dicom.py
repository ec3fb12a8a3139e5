"""DICOM files -> 8-bit grayscale pictures, one per frame (pydicom). What happens to the values: read.py.

Rescale Slope/Intercept, then the VOI window (Window Center/Width with its VOI LUT Function, PS3.3 C.11.2), each
from the frame's own functional group in enhanced multi-frame files, else from the data set; without a window the
0.5th-99.5th percentiles of the frame (8-bit data that needs no rescale stays as stored). MONOCHROME1 is inverted.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from braintumor.scans.dicom_checks import check_encapsulated, is_deflated, read_deflated
from braintumor.scans.limits import ImageLimits, ImageProblem, check_decoded_bytes, check_finite, check_pixels
from braintumor.scans.pictures import Pictures, percentile_window

# pydicom names a decoder plugin; pip installs it under this name.
PIP_NAMES = {"gdcm": "python-gdcm"}


def has_dicom_preamble(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then `DICM`."""
    return data[128:132] == b"DICM"


def read_dicom(data: bytes, *, limits: ImageLimits, keep: Callable[[int], list[int]] | None = None) -> Pictures:
    """The file's frames as pictures; `keep(frames)` picks the frames to decode (all when None)."""
    import pydicom

    try:
        if is_deflated(data):  # inflated only as far as its header promises, checked on the way (dicom_checks.py)
            ds = read_deflated(data, check_header=lambda head: _check_header(head, limits))
        else:
            ds = pydicom.dcmread(io.BytesIO(data), force=not has_dicom_preamble(data))
    except ImageProblem:
        raise
    except Exception as exc:  # pydicom raises many types for malformed files
        raise ImageProblem(f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds:
        what = ds.get("SOPClassUID")
        raise ImageProblem(
            f"a DICOM file without pixel data ({getattr(what, 'name', what) or 'no SOP class'}): not an image"
        )
    rows, columns, frames = _check_header(ds, limits)
    _check_decoder(ds)
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and syntax.is_encapsulated:
        check_encapsulated(ds, str(syntax))
    numbers = list(range(frames)) if keep is None else keep(frames)
    try:
        if len(numbers) == frames:
            pixels = ds.pixel_array  # (R, C), (F, R, C), (R, C, 3) or (F, R, C, 3); YBR arrives as RGB
            if frames == 1:
                pixels = pixels[None]  # (1, R, C[, 3])
        else:  # only the frames kept (`predict --middle`) are decoded
            from pydicom.pixels import pixel_array

            pixels = [pixel_array(ds, index=i) for i in numbers]
    except Exception as exc:
        raise ImageProblem(f"cannot decode the DICOM pixel data ({type(exc).__name__}: {exc})") from None
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"):
        images = [
            Image.fromarray(_monochrome(ds, frame, i, photometric), mode="L") for i, frame in zip(numbers, pixels)
        ]
    else:
        images = [_colour_to_gray(ds, frame, photometric) for frame in pixels]
    signed = " signed" if ds.get("PixelRepresentation") == 1 else ""
    description = f"DICOM {photometric} {ds.get('BitsStored', ds.get('BitsAllocated', '?'))}-bit{signed}"
    if frames > 1:
        description += f", {frames} frames"
    return Pictures(images, numbers, "dicom", description, total=frames)


def _check_header(ds, limits: ImageLimits) -> tuple[int, int, int]:
    """(rows, columns, frames), within the limits on frames, pixels and decoded bytes; before any decoding."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames") or 1)
        bits = int(ds.get("BitsAllocated") or 8)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except Exception as exc:
        raise ImageProblem(
            f"a DICOM image without valid Rows, Columns, Number of Frames or Bits Allocated ({exc})"
        ) from None
    check_pixels(rows, columns, frames, limits, unit="frames")
    check_decoded_bytes(
        rows * columns * frames * samples,
        max(bits, 1) / 8,
        limits,
        what=f"{frames} frames of {columns}x{rows} x {samples} samples of {bits} bits",
    )
    return rows, columns, frames


def _check_decoder(ds) -> None:
    """Refuse, naming the transfer syntax and what decodes it, pixel data that no installed plugin can decode."""
    from pydicom.pixels import get_decoder

    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_compressed:
        return
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageProblem(
            f"DICOM transfer syntax {syntax.name} ({syntax}) has no pixel data decoder in pydicom; "
            "convert the file to an uncompressed syntax (e.g. `gdcmconv --raw`)"
        ) from None
    if decoder.is_available:
        return
    options = []
    for line in decoder.missing_dependencies:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        plugin, _, needs = line.partition(" - requires ")
        names = [re.split(r"[<>=!~\s]", need.strip())[0] for need in needs.split(" and ") if need.strip()]
        packages = [PIP_NAMES.get(name, name) for name in names]
        options.append(f"{plugin} (pip install {' '.join(packages)})" if packages else plugin)
    raise ImageProblem(
        f"DICOM compressed as {syntax.name} ({syntax}): no decoder for it is installed here; "
        f"install one of: {'; '.join(options)}"
    )


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
    check_finite(values)
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


def _frame_attribute(ds, index: int, sequence: str, keyword: str):
    """An attribute for frame `index`: its per-frame functional group, the shared one, or the top level.

    Enhanced multi-frame files (Enhanced MR) keep the rescale and the window there, possibly frame by frame."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    for groups in (
        (per_frame[index] if per_frame and index < len(per_frame) else None),
        (shared[0] if shared else None),
    ):
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
        raise ImageProblem(
            f"DICOM photometric interpretation {photometric!r} with "
            f"{ds.get('SamplesPerPixel')} samples per pixel is not supported; "
            "use MONOCHROME1, MONOCHROME2, RGB, YBR or PALETTE COLOR"
        )
    if frame.dtype != np.uint8:  # 16-bit colour: scale the stored range to 8 bits
        top = float(2 ** int(ds.get("BitsStored") or 16) - 1) if photometric != "PALETTE COLOR" else 65535.0
        frame = np.round(np.clip(frame.astype(np.float64) / top, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(frame), mode="RGB").convert("L")
