"""What a file must stay within before its pixels are decoded, and the one error every refused file raises.

Every reader (raster.py, dicom.py, nifti.py) checks these before it decodes anything: the file's size
(data.max_file_bytes), each picture's pixels and aspect ratio (data.max_image_pixels, data.max_aspect_ratio), the
number of pictures in a file and in a served request (data.max_frames), the pixels of all of a file's pictures
together, and the bytes its values take once decoded. After decoding, `check_finite` refuses NaN and infinity.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from braintumor.config import DataConfig
from braintumor.errors import BrainTumorError

DECODED_BYTES_PER_PIXEL = 4  # what a file's decoded values may take, per pixel of data.max_image_pixels


class ImageProblem(ValueError):
    """This file cannot be used as a scan; str(exc) says why in words a user understands."""


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    """What a file must stay within before its pixels are decoded (params: data.max_*)."""

    max_pixels: int = DataConfig.max_image_pixels
    max_aspect_ratio: float = DataConfig.max_aspect_ratio
    max_file_bytes: int = DataConfig.max_file_bytes
    max_frames: int = DataConfig.max_frames
    frames_used: int = 0  # pictures already in the request (the served model: max_frames bounds a request too)

    @classmethod
    def of(cls, data: DataConfig | dict) -> "ImageLimits":
        """From the params' `data` section, or its dict as a model file stores it (an older one may lack keys)."""
        values = data if isinstance(data, dict) else dataclasses.asdict(data)
        return cls(
            max_pixels=int(values.get("max_image_pixels", cls.max_pixels)),
            max_aspect_ratio=float(values.get("max_aspect_ratio", cls.max_aspect_ratio)),
            max_file_bytes=int(values.get("max_file_bytes", cls.max_file_bytes)),
            max_frames=int(values.get("max_frames", cls.max_frames)),
        )


def problem_of(exc: Exception) -> str:
    """Why one file or request row cannot be used, for any exception raised while preparing it.

    Our own errors say it in their message. Any other exception (MemoryError, a decoder's bug) is named by its
    type alone: its text or a traceback could show the server's paths, and one bad scan must never stop the others.
    """
    if isinstance(exc, (ImageProblem, BrainTumorError)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory to decode this image"
    if isinstance(exc, OSError):
        return f"cannot read the file ({exc.strerror or type(exc).__name__})"
    return f"cannot be decoded as a scan ({type(exc).__name__})"


def read_checked(source: str | os.PathLike | bytes, *, max_file_bytes: int) -> bytes:
    """A file's bytes (or the bytes given), refused before they are read when over `max_file_bytes`."""
    if isinstance(source, (bytes, bytearray)):
        size = len(source)
        check_file_size(size, max_file_bytes)
        return bytes(source)
    check_file_size(os.stat(source).st_size, max_file_bytes)
    with open(source, "rb") as fh:
        data = fh.read(max_file_bytes + 1)  # bounded: the file may have grown since stat
    check_file_size(len(data), max_file_bytes)
    return data


def check_file_size(size: int, max_file_bytes: int) -> None:
    """Raise ImageProblem when a file of `size` bytes is over data.max_file_bytes."""
    if size > max_file_bytes:
        raise ImageProblem(
            f"{size:,} bytes is over the limit data.max_file_bytes={max_file_bytes:,}; "
            "raise the limit if the scan is real"
        )


def check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    """Raise ImageProblem for a picture with no pixels, too many, or too thin (before anything is decoded)."""
    if width < 1 or height < 1:
        raise ImageProblem(f"{width}x{height} image has no pixels")
    if width * height > limits.max_pixels:
        raise ImageProblem(
            f"{width}x{height} = {width * height:,} pixels is over the limit data.max_image_pixels="
            f"{limits.max_pixels:,} (a possible decompression bomb); raise the limit if the scan is real"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise ImageProblem(
            f"{width}x{height} is {ratio:,.1f} times longer than wide, over the limit "
            f"data.max_aspect_ratio={limits.max_aspect_ratio:g}; crop it to the scan"
        )


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
    """Refuse NaN and infinity in decoded values (any intensity window over them would be a guess): the one check
    for 16-bit and float raster images, DICOM and NIfTI alike."""
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ImageProblem(
            f"{bad:,} of {values.size:,} pixels are not finite numbers (NaN or infinity); "
            "replace them (e.g. with the background value) and save the scan again"
        )
