"""Raster images (JPEG, PNG, BMP, TIFF, WebP, GIF) through Pillow: the header checked before anything is decoded,
then every supported mode to 8-bit grayscale."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from braintumor.scans.limits import ImageLimits, ImageProblem, check_dimensions, check_finite

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
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


def open_raster(
    data: bytes, *, limits: ImageLimits, draft: int | None = None, also: tuple[str, ...] = ()
) -> Image.Image:
    """Check the header (format, pixels, aspect ratio, mode), then fully decode; or raise ImageProblem.

    Returns the image in its own mode. `draft` lets JPEG decode at a reduced scale that is still at least `draft`
    pixels on each side, which is several times faster for thumbnails and the training cache. `also`: the formats
    other readers take, named in the refusal of a file that is none of Pillow's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(f"too many pixels, a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageProblem(f"not an image in an accepted format ({', '.join(ACCEPTED_FORMATS + also)})") from None
    except Exception as exc:  # Pillow raises many types for malformed headers
        raise ImageProblem(f"unreadable image header ({type(exc).__name__}: {exc})") from None
    check_dimensions(*image.size, limits)
    if image.mode not in SUPPORTED_MODES:
        raise ImageProblem(f"unsupported image mode {image.mode!r}; save it as grayscale or RGB")
    # Recorded before `draft` can shrink the image or change its mode.
    image.info["source_size"], image.info["source_mode"] = image.size, image.mode
    if draft and image.format in ("JPEG", "MPO"):
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
        # float64: a float32 scan's range (up to 3.4e38 - -3.4e38) would overflow in float32.
        pixels = np.asarray(image, dtype=np.float64)
        check_finite(pixels)  # NaN or infinity: any stretch would be a guess (the old one made the whole scan black)
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
