"""Reading one scan safely: every way a file can be broken becomes an `ImageProblem` with a reason.

The same `decode_grayscale` is used by validation, the training cache, evaluation, `braintumor predict` and the
served model, so a scan is turned into pixels one way everywhere.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
# Files that operating systems and tools drop into folders; never data, never reported.
IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "._.ds_store"})
# Modes converted to 8-bit grayscale. Anything else (LAB, HSV, ...) is reported as unsupported.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                             "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class ImageProblem(ValueError):
    """This file cannot be used as a scan; str(exc) says why in words a user understands."""


def is_candidate(path: Path) -> bool:
    """Should this file be read as an image? (Hidden and OS junk files are skipped silently.)"""
    name = path.name
    return not name.startswith(".") and name.lower() not in IGNORED_NAMES and path.suffix.lower() in IMAGE_SUFFIXES


def open_checked(source: str | os.PathLike | bytes, *, max_pixels: int, draft: int | None = None) -> Image.Image:
    """Open and fully decode an image, or raise ImageProblem. Returns the image in its own mode.

    `draft` lets JPEG decode at a reduced scale that is still at least `draft` pixels on each side, which is
    several times faster for thumbnails and the training cache.
    """
    data = Path(source).read_bytes() if not isinstance(source, (bytes, bytearray)) else bytes(source)
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(f"too many pixels, a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image: Pillow cannot identify the file format") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageProblem(f"unreadable image header ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageProblem(f"{width}x{height} = {width * height:,} pixels is over the limit data.max_image_pixels="
                           f"{max_pixels:,} (a possible decompression bomb); raise the limit if the scan is real")
    if image.mode not in SUPPORTED_MODES:
        raise ImageProblem(f"unsupported image mode {image.mode!r}; save it as grayscale or RGB")
    # Recorded before `draft` can shrink the image or change its mode.
    image.info["source_size"], image.info["source_mode"] = image.size, image.mode
    if draft and image.format == "JPEG":
        image.draft("L", (draft, draft))
    try:
        image.load()
    except Exception as exc:
        raise ImageProblem(f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from None
    return image


def to_grayscale(image: Image.Image) -> Image.Image:
    """Any supported mode -> 8-bit grayscale (mode L). MRI is one channel; the model repeats it to three."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        # 16-bit and float scans: stretch the scan's own range to 0..255 (MRI rarely uses the full 16 bits).
        pixels = np.asarray(image, dtype=np.float32)
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


def decode_grayscale(source: str | os.PathLike | bytes, *, max_pixels: int, draft: int | None = None) -> Image.Image:
    """The one way a scan becomes pixels: checked open, full decode, then 8-bit grayscale."""
    return to_grayscale(open_checked(source, max_pixels=max_pixels, draft=draft))


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and centre-crop to size x size. Returns (size, size) uint8.

    This is the first step of every preset in transforms.py and the form the training cache stores.
    """
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.array(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)  # writable copy
