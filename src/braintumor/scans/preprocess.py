"""What every scan goes through before the network: crop to the head, pad to square, resize, normalise intensity.

Scans of one class from one hospital share a look (field of view, brightness, contrast) that a network learns
as a shortcut for the class. On the public dataset the Training gliomas are dark, low-contrast slices and the
Testing gliomas bright, high-contrast ones: a model that scores 0.86 on val recalled 0.20 of the Testing gliomas.
This step takes away what differs between sources and keeps the anatomy:

1. **Head crop**: threshold the scan, keep the largest connected region (the head; not text, rulers or noise),
   take its bounding box plus a margin, and pad that to a square with background. Every scan then fills the
   frame the same way, whatever the field of view, the matrix size or the black border.
2. **Resize** the square to `resize_size` (never allocating more than that square, whatever the aspect ratio).
3. **Intensity**: a per-scan window from the head's own percentiles (`percentile`), or histogram equalisation
   of the head (`equalize`), so brightness and contrast no longer tell one source from another.

One function, `prepare_image`, runs in validation's preview, the training cache, evaluation, `braintumor
predict` and the served model; its settings (`ScanPrep`) are saved in the model file. numpy and Pillow only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # only a type here: the readers sit above this module
    from braintumor.scans.pictures import Pictures

INTENSITY_MODES = ("none", "percentile", "equalize")
_MASK_SIDE = 64  # the head is found on a thumbnail this size (longer side): cheap, and enough for a bounding box


@dataclass(frozen=True)
class ScanPrep:
    """How a decoded grayscale scan becomes the (S, S) uint8 image the presets take."""

    size: int  # S, model.resize_size
    head_crop: bool = False  # False: resize the shorter side to S and centre-crop (format-1 model files)
    crop_threshold: float = 0.1  # foreground = above this fraction of the scan's 99th percentile
    crop_margin: float = 0.04  # added around the head box on each side, as a fraction of its longer side
    intensity: str = "none"  # none | percentile | equalize
    percentiles: tuple[float, float] = (1.0, 99.0)


def prepare_image(image: Image.Image, prep: ScanPrep) -> np.ndarray:
    """A mode-L image of any size -> (S, S) uint8, as every stage sees it."""
    if prep.head_crop:
        box = head_box(np.asarray(image), threshold=prep.crop_threshold, margin=prep.crop_margin)
        resized = pad_to_square(image.crop(box), prep.size)
    else:
        resized = centre_square(image, prep.size)
    return normalise_intensity(resized, prep)


def centre_square(image: Image.Image, size: int) -> np.ndarray:
    """The centre square of the image (its side the shorter side), resized to (size, size) (no head crop).

    Only that square is resampled, straight into (size, size): whatever the aspect ratio, nothing larger is
    allocated (a 1 x 40,000 image must not become a 256 x 10,240,000 array on the way).
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    resized = image.resize((size, size), Image.BILINEAR, box=(left, top, left + side, top + side))
    return np.array(resized, dtype=np.uint8)  # writable copy


def pad_to_square(image: Image.Image, size: int) -> np.ndarray:
    """Fit the whole image inside (size, size), keeping its aspect ratio, centred on a black background."""
    width, height = image.size
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))
    return canvas


def head_box(pixels: np.ndarray, *, threshold: float, margin: float) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the largest bright region of a (H, W) uint8 scan, plus a margin.

    The whole scan when no region stands out (a blank image, or one that is all foreground).
    """
    height, width = pixels.shape
    region, factor = head_region(pixels, threshold=threshold)
    if not region.any():
        return 0, 0, width, height
    ys, xs = np.nonzero(region)
    top, bottom = ys.min() * factor, min(height, (ys.max() + 1) * factor)
    left, right = xs.min() * factor, min(width, (xs.max() + 1) * factor)
    pad = int(round(margin * max(bottom - top, right - left)))
    return max(0, left - pad), max(0, top - pad), min(width, right + pad), min(height, bottom + pad)


def head_region(pixels: np.ndarray, *, threshold: float, level: float | None = None) -> tuple[np.ndarray, int]:
    """The head on a thumbnail of a (H, W) uint8 scan: (boolean (h, w) mask, thumbnail cell size in pixels).

    The largest region brighter than `threshold` x `level` (default: the thumbnail's 99th percentile). Empty when
    the level is 0 (a black scan)."""
    height, width = pixels.shape
    factor = max(1, int(np.ceil(max(height, width) / _MASK_SIDE)))
    thumb = _block_mean(pixels, factor)  # (h, w) float32, each cell the mean of a factor x factor block
    level = np.percentile(thumb, 99) if level is None else level
    if level <= 0:
        return np.zeros(thumb.shape, dtype=bool), factor
    mask = _dilate(thumb > threshold * level)  # close one-cell gaps (a thin skull, a dark sulcus)
    return largest_component(mask), factor


def head_fraction(pixels: np.ndarray, *, threshold: float, level: float) -> float:
    """The fraction of a (H, W) uint8 scan that its head region covers, with the brightness `level` given (one for
    all the slices of a volume: a slice of noise outside the head then has no region, whatever its own range)."""
    region, factor = head_region(pixels, threshold=threshold, level=level)
    height, width = pixels.shape
    return min(1.0, float(region.sum()) * factor * factor / (height * width))  # edge cells are partly outside


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a boolean (h, w) mask, by label propagation (numpy only).

    Every foreground cell starts with its own label; each round, a cell takes the largest label among its
    neighbours, until nothing changes. Thumbnails are at most 64 x 64, so this takes a few milliseconds.
    """
    labels = np.where(mask, np.arange(1, mask.size + 1, dtype=np.int32).reshape(mask.shape), 0)
    for _ in range(mask.size):  # the longest possible path; real heads converge in tens of rounds
        grown = _dilate_max(labels) * mask
        if np.array_equal(grown, labels):
            break
        labels = grown
    if not mask.any():
        return mask
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return labels == counts.argmax()


def normalise_intensity(image: np.ndarray, prep: ScanPrep) -> np.ndarray:
    """(S, S) uint8 -> (S, S) uint8 with the head's intensities windowed or equalised; background stays 0."""
    if prep.intensity == "none":
        return image
    level = np.percentile(image, 99)
    head = image > prep.crop_threshold * level if level > 0 else np.zeros(image.shape, dtype=bool)
    if head.sum() < 16:  # nothing to measure: leave the scan as it is
        return image
    values = image[head]
    if prep.intensity == "percentile":
        low, high = np.percentile(values, prep.percentiles)
        if high <= low:
            return image
        scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
        return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    # equalize: each grey level -> the fraction of head pixels at or below it, so the head's histogram is flat.
    cdf = np.cumsum(np.bincount(values, minlength=256)).astype(np.float64)
    lut = np.round(255.0 * cdf / cdf[-1]).astype(np.uint8)
    return np.where(head, lut[image], 0).astype(np.uint8)


def _block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    height, width = pixels.shape
    h, w = -(-height // factor), -(-width // factor)
    padded = np.zeros((h * factor, w * factor), dtype=np.float32)
    padded[:height, :width] = pixels
    return padded.reshape(h, factor, w, factor).mean(axis=(1, 3))


def _dilate(mask: np.ndarray) -> np.ndarray:
    return _dilate_max(mask.astype(np.int32)) > 0


def _dilate_max(values: np.ndarray) -> np.ndarray:
    """3 x 3 maximum filter with zero padding."""
    padded = np.pad(values, 1)
    h, w = values.shape
    out = values.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            np.maximum(out, padded[dy : dy + h, dx : dx + w], out=out)
    return out


MIN_HEAD_FRACTION = 0.1  # a picture "shows a head" when the head crop's region covers this much of it


def head_pictures(pictures: Pictures, crop_threshold: float, indices: list[int] | None = None) -> list[bool]:
    """Which of the pictures (all, or those at `indices`) show a head: the head crop's region, at the brightness
    level of the whole file (its pictures' 99th percentile), covers at least MIN_HEAD_FRACTION of the picture."""
    level = float(np.percentile(np.stack([np.asarray(image) for image in pictures.images]), 99))
    indices = range(len(pictures.images)) if indices is None else indices
    return [
        head_fraction(np.asarray(pictures.images[i]), threshold=crop_threshold, level=level) >= MIN_HEAD_FRACTION
        for i in indices
    ]
