"""The built-in sample dataset: synthetic, MRI-like axial slices in the real dataset's layout.

Every class shares the same canvas size, mode (grayscale), file format (JPEG), skull ring, brain texture,
ventricles, pose, contrast and noise, so a model can only tell the classes apart by the lesion itself:

- glioma_tumor:     an irregular, heterogeneous mass with a dark necrotic core, inside the parenchyma
- meningioma_tumor: a round, bright, homogeneous mass pressed against the inner skull
- pituitary_tumor:  a small bright mass at the midline of the skull base
- no_tumor:         no mass

Images are a pure function of (seed, split, class, index), so the same call always writes the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from braintumor.config import DEFAULT_CLASSES
from braintumor.errors import DataError
from braintumor.fileio import staged_folders

SPLITS = ("Training", "Testing")
CANVAS = 256


def write_sample_dataset(
    root: str | Path,
    *,
    per_class: int = 100,
    test_per_class: int | None = None,
    seed: int = 0,
    size: int = CANVAS,
    classes: list[str] | None = None,
) -> dict[str, int]:
    """Write `root/Training/<class>/*.jpg` and `root/Testing/<class>/*.jpg`; return the count per split.

    Refuses a `root` that already holds a dataset (synthetic scans must never mix into real ones). Both folders
    appear at once when every image is written: an interrupted call leaves nothing behind.
    """
    if has_dataset(root):
        raise DataError(
            f"{root} already holds a dataset (Training/ or Testing/ with files in it); nothing was "
            "written. Give an empty or new folder, or move the dataset away first."
        )
    classes = classes or list(DEFAULT_CLASSES)
    test_per_class = max(2, per_class // 4) if test_per_class is None else test_per_class
    counts = {}
    with staged_folders(root, list(SPLITS)) as staging:
        for split_index, (split, n) in enumerate(zip(SPLITS, (per_class, test_per_class))):
            for class_index, name in enumerate(classes):
                folder = staging / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    rng = np.random.default_rng([seed, split_index, class_index, i])
                    image = synthetic_slice(rng, _lesion_kind(name), size=size)
                    image.save(folder / f"{split[:2].lower()}_{i:04d}.jpg", quality=92)
            counts[split] = n * len(classes)
    return counts


def _lesion_kind(class_name: str) -> str:
    for kind in ("glioma", "meningioma", "pituitary"):
        if kind in class_name:
            return kind
    return "none"


def synthetic_slice(rng: np.random.Generator, lesion: str, *, size: int = CANVAS) -> Image.Image:
    """One grayscale slice (mode L, size x size) with the given lesion kind: glioma/meningioma/pituitary/none."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size  # (H, W) in [0, 1)
    # Pose: the head is shifted, rotated and scaled a little on every slice.
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.04, 0.04)
    angle = rng.uniform(-0.25, 0.25)
    a, b = rng.uniform(0.33, 0.40), rng.uniform(0.40, 0.46)  # half-axes: width, height
    cos, sin = math.cos(angle), math.sin(angle)
    u = ((xx - cx) * cos + (yy - cy) * sin) / a  # head coordinates: the skull is the unit circle
    v = (-(xx - cx) * sin + (yy - cy) * cos) / b
    r = np.sqrt(u**2 + v**2)

    skull = 0.06 + rng.uniform(0, 0.02)
    brain = r < 1 - skull - 0.03
    img = np.zeros((size, size), np.float32)
    img[(r < 1) & (r >= 1 - skull)] = rng.uniform(0.75, 0.9)  # bright skull ring
    img[(r < 1 - skull) & ~brain] = 0.08  # dark CSF rim
    texture = _smooth_noise(rng, size, cells=12) * 0.18 + _smooth_noise(rng, size, cells=40) * 0.08
    img[brain] = (rng.uniform(0.38, 0.5) + texture)[brain]
    # Two ventricles: dark crescents either side of the midline.
    for side in (-1, 1):
        vent = ((u - side * 0.12) / 0.08) ** 2 + ((v + 0.05) / 0.28) ** 2 < 1
        img[vent & brain] = 0.12

    if lesion == "glioma":
        # Irregular mass inside the parenchyma: a thresholded blob with a bright rim and a dark core.
        ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.15, 0.4)
        lu, lv = dist * math.cos(ang), dist * math.sin(ang)
        radius = rng.uniform(0.24, 0.34)
        d = np.sqrt((u - lu) ** 2 + (v - lv) ** 2) / radius
        ragged = d + (_smooth_noise(rng, size, cells=20) * 0.6)
        mass = (ragged < 1) & brain
        core = (ragged < 0.55) & brain
        img[mass] = 0.72 + _smooth_noise(rng, size, cells=30)[mass] * 0.25
        img[core] = 0.22 + _smooth_noise(rng, size, cells=30)[core] * 0.1
    elif lesion == "meningioma":
        # Round, bright, homogeneous, sitting on the inner surface of the skull.
        ang = rng.uniform(0, 2 * math.pi)
        radius = rng.uniform(0.2, 0.28)
        centre = 1 - skull - radius * 0.7
        lu, lv = centre * math.cos(ang), centre * math.sin(ang)
        mass = ((u - lu) ** 2 + (v - lv) ** 2 < radius**2) & (r < 1 - skull)
        img[mass] = rng.uniform(0.85, 0.95)
    elif lesion == "pituitary":
        # Small bright mass at the midline, low in the skull (the sella turcica).
        radius = rng.uniform(0.12, 0.16)
        lu, lv = rng.uniform(-0.04, 0.04), rng.uniform(0.58, 0.68)
        mass = ((u - lu) / radius) ** 2 + ((v - lv) / (radius * 0.8)) ** 2 < 1
        img[mass] = rng.uniform(0.85, 0.97)

    # Scanner variation: contrast (gamma), gain, noise and a little blur.
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25) * rng.uniform(0.85, 1.1)
    img += rng.normal(0, rng.uniform(0.01, 0.04), img.shape).astype(np.float32)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), mode="L")
    return pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))


def _smooth_noise(rng: np.random.Generator, size: int, *, cells: int) -> np.ndarray:
    """Zero-mean noise in about [-1, 1] that varies over `size / cells` pixels (bicubic-upsampled grid)."""
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    smooth = Image.fromarray(grid, mode="L").resize((size, size), Image.BICUBIC)
    return np.asarray(smooth, np.float32) / 127.5 - 1.0


def has_dataset(root: str | Path) -> bool:
    """True when `root` holds a Training or Testing folder with anything in it."""
    return any((Path(root) / split).is_dir() and any((Path(root) / split).iterdir()) for split in SPLITS)
