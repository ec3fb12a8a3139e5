"""Reading one scan safely: every way a file can be broken becomes an `ImageProblem` with a reason.

The same `decode_grayscale` is used by validation, the training cache, evaluation, `braintumor predict` and the
served model, so a scan is turned into pixels one way everywhere.
"""

from __future__ import annotations

import dataclasses
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from braintumor.config import DataConfig
from braintumor.errors import BrainTumorError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
# Files that operating systems and tools drop into folders; never data, never reported.
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "._.ds_store"})
# Modes converted to 8-bit grayscale. Anything else (LAB, HSV, ...) is reported as unsupported.
SUPPORTED_MODES = frozenset(
    {
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "I",
        "I;16",
        "I;16L",
        "I;16B",
        "I;16N",
        "F",
    }
)


# What Pillow may open a user's file as: raster formats only, named, so that no other plugin ever parses a user's
# file (EPS would start Ghostscript, when installed, on untrusted input). The JPEG reader also opens the JPEGs that
# cameras and phones write with a second, preview picture (Pillow calls them MPO) as the JPEG they are.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF")
# Read before Pillow is asked, by pydicom and nibabel (medical.py), with the same limits.
MEDICAL_FORMATS = ("DICOM", "NIfTI")


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


def is_candidate(path: Path, head: Callable[[], bytes] | None = None) -> bool:
    """Should this file be read as a scan? (Hidden and OS junk files are skipped silently.) `head()` gives the
    file's first bytes when `path` is not a file on disk (a zip member); else an extension-less name is opened."""
    from braintumor.medical import is_medical_name  # DICOM (.dcm, or the DICM preamble) and NIfTI

    name = path.name
    if name.startswith(".") or name.lower() in IGNORED_NAMES:
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or is_medical_name(path, head)


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


def open_checked(
    source: str | os.PathLike | bytes, *, limits: ImageLimits, draft: int | None = None, name: str = ""
) -> Image.Image:
    """Check the size and the header (format, pixels, aspect ratio, mode), then fully decode; or raise ImageProblem.
    `name`: the file's name for what pydicom and nibabel say about it, when `source` is its bytes.

    Returns the image in its own mode. `draft` lets JPEG decode at a reduced scale that is still at least `draft`
    pixels on each side, which is several times faster for thumbnails and the training cache.
    """
    data = read_checked(source, max_file_bytes=limits.max_file_bytes)
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    from braintumor.medical import kind_of, single_picture

    name = name if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    kind = kind_of(data, name)
    if kind:  # DICOM and NIfTI are read by pydicom and nibabel (medical.py), never by Pillow
        return single_picture(data, kind, limits=limits, name=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(f"too many pixels, a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageProblem(
            f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS + MEDICAL_FORMATS)})"
        ) from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageProblem(f"unreadable image header ({type(exc).__name__}: {exc})") from None
    _check_header(image, limits)
    # Recorded before `draft` can shrink the image or change its mode.
    image.info["source_size"], image.info["source_mode"] = image.size, image.mode
    if draft and image.format in ("JPEG", "MPO"):
        image.draft("L", (draft, draft))
    try:
        image.load()
    except Exception as exc:
        raise ImageProblem(f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from None
    return image


def _check_header(image: Image.Image, limits: ImageLimits) -> None:
    check_dimensions(*image.size, limits)
    if image.mode not in SUPPORTED_MODES:
        raise ImageProblem(f"unsupported image mode {image.mode!r}; save it as grayscale or RGB")


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


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any supported mode -> 8-bit grayscale (mode L). MRI is one channel; the model repeats it to three."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # 16-bit and float scans: stretch the scan's own range to 0..255 (MRI rarely uses the full 16 bits).
        # float64: a float32 scan's range (up to 3.4e38 - -3.4e38) would overflow in float32.
        pixels = np.asarray(image, dtype=np.float64)
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        if bad:  # NaN or infinity: any stretch would be a guess (the old one made the whole scan black)
            raise ImageProblem(
                f"{bad:,} of {pixels.size:,} pixels are not finite numbers (NaN or infinity); "
                "replace them (e.g. with the background value) and save the scan again"
            )
        lo, hi = float(pixels.min()), float(pixels.max())
        scaled = (pixels - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(pixels)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, the background of a scan.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    if mode == "CMYK":
        return image.convert("RGB").convert("L")
    return image.convert("L")


def decode_grayscale(
    source: str | os.PathLike | bytes, *, limits: ImageLimits, draft: int | None = None
) -> Image.Image:
    """The one way a scan becomes pixels: checked open, full decode, then 8-bit grayscale."""
    return to_grayscale(open_checked(source, limits=limits, draft=draft))
