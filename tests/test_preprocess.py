"""Preprocessing takes away what differs between sources (field of view, border, brightness, contrast) and keeps
the anatomy; it never allocates more than the square, whatever the image's shape."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from braintumor.data.cache import load_image
from braintumor.data.sample import synthetic_slice
from braintumor.scans.limits import ImageLimits
from braintumor.scans.preprocess import (
    ScanPrep,
    centre_square,
    head_box,
    largest_component,
    pad_to_square,
    prepare_image,
)


def _scan_with_border_and_label() -> np.ndarray:
    """A 256 x 256 synthetic head placed off-centre on a 400 x 300 black canvas, plus a bright text-like mark."""
    head = np.asarray(synthetic_slice(np.random.default_rng(3), "glioma_tumor", size=256))
    canvas = np.zeros((300, 400), dtype=np.uint8)
    canvas[30:286, 120:376] = head
    canvas[5:15, 5:40] = 255  # a burnt-in annotation in the corner, not part of the head
    return canvas


def test_head_box_holds_the_head_and_leaves_out_annotations_and_border():
    canvas = _scan_with_border_and_label()
    left, top, right, bottom = head_box(canvas, threshold=0.1, margin=0.0)
    # The head's bright pixels lie inside the box ...
    ys, xs = np.nonzero(canvas[30:286, 120:376] > 25)
    assert left <= 120 + xs.min() and right >= 120 + xs.max() and top <= 30 + ys.min() and bottom >= 30 + ys.max()
    # ... and the box is about the head's size, not the canvas's; the corner mark is outside it.
    assert right - left < 280 and bottom - top < 280
    assert left > 40 and top > 15


def test_largest_component_keeps_only_the_biggest_region():
    mask = np.zeros((20, 20), dtype=bool)
    mask[2:4, 2:4] = True  # 4 cells
    mask[8:16, 8:16] = True  # 64 cells
    mask[0, 19] = True
    region = largest_component(mask)
    assert region.sum() == 64 and region[8:16, 8:16].all() and not region[2:4, 2:4].any()
    diagonal = np.eye(6, dtype=bool)  # 8-connected: one region
    assert largest_component(diagonal).sum() == 6
    assert not largest_component(np.zeros((5, 5), dtype=bool)).any()


def test_blank_and_full_frames_keep_the_whole_image():
    assert head_box(np.zeros((50, 80), dtype=np.uint8), threshold=0.1, margin=0.05) == (0, 0, 80, 50)
    assert head_box(np.full((50, 80), 200, dtype=np.uint8), threshold=0.1, margin=0.05) == (0, 0, 80, 50)


@pytest.mark.parametrize("shape", [(1, 40_000), (40_000, 1), (3, 9_000), (128, 128)])
def test_thin_images_never_allocate_more_than_the_square(shape, monkeypatch):
    # Every resize is recorded: none may make an image larger than the (64, 64) output, whatever the aspect
    # ratio (resizing the short side of 1 x 40,000 to 64 first would make 64 x 2,560,000 pixels).
    made = []
    real_resize = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        made.append(tuple(size))
        return real_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    image = Image.fromarray(np.full(shape, 180, dtype=np.uint8))
    for prep in (ScanPrep(size=64, head_crop=True, intensity="percentile"), ScanPrep(size=64)):
        square = prepare_image(image, prep)
        assert square.shape == (64, 64) and square.dtype == np.uint8
    assert pad_to_square(image, 64).shape == (64, 64)
    assert made and max(w * h for w, h in made) <= 64 * 64, made


def test_centre_square_keeps_the_centre_and_crops_the_sides():
    wide = np.zeros((50, 100), np.uint8)
    wide[:, 20:80] = 255  # bright centre, dark sides (outside the centre square 25:75)
    out = centre_square(Image.fromarray(wide), 20)
    assert out.shape == (20, 20) and out.dtype == np.uint8
    assert out.min() >= 250  # the dark sides were cropped away
    tall = np.zeros((100, 50), np.uint8)
    tall[:20], tall[80:] = 255, 255  # bright top and bottom, outside the centre square 25:75
    assert centre_square(Image.fromarray(tall), 20).max() == 0


def test_pad_to_square_keeps_the_aspect_ratio_centred_on_black():
    image = Image.fromarray(np.full((50, 100), 200, dtype=np.uint8))  # twice as wide as tall
    square = pad_to_square(image, 40)
    rows = np.nonzero(square.max(axis=1))[0]
    assert (rows.min(), rows.max()) == (10, 29)  # 20 rows of image, 10 black rows above and below
    assert square[:, 0].max() == 200 and square[:, -1].max() == 200


@pytest.mark.parametrize(
    "mode, bright_curve",
    [
        ("percentile", lambda x: 1.7 * x),  # percentile windows undo a linear change of brightness and contrast
        ("equalize", lambda x: 255 * (x / 255) ** 0.6),  # equalisation undoes any monotonic curve, gamma included
    ],
)
def test_intensity_normalisation_makes_a_dark_and_a_bright_copy_of_a_scan_alike(mode, bright_curve):
    """The source shortcut the issue found: one source's scans dark and flat, another's bright and contrasty."""
    scan = np.asarray(synthetic_slice(np.random.default_rng(5), "meningioma_tumor", size=128)).astype(np.float32)
    scan[scan < 16] = 0  # a clean black background, as MRI scanners write it
    dark = Image.fromarray(np.clip(scan * 0.4, 0, 255).astype(np.uint8))  # low brightness and contrast
    bright = Image.fromarray(np.clip(bright_curve(scan), 0, 255).astype(np.uint8))
    raw = ScanPrep(size=96, head_crop=True, intensity="none")
    norm = ScanPrep(size=96, head_crop=True, intensity=mode)
    raw_gap = np.abs(prepare_image(dark, raw).astype(float) - prepare_image(bright, raw)).mean()
    norm_gap = np.abs(prepare_image(dark, norm).astype(float) - prepare_image(bright, norm)).mean()
    assert raw_gap > 40  # before: the two look very different
    assert norm_gap < raw_gap / 3  # after: most of the difference is gone
    head = prepare_image(bright, norm) > 0
    assert prepare_image(bright, norm)[head].max() == 255  # the head uses the whole range


def test_no_intensity_step_leaves_pixels_as_they_are():
    scan = Image.fromarray(np.asarray(synthetic_slice(np.random.default_rng(1), "no_tumor", size=64)))
    image = prepare_image(scan, ScanPrep(size=64, head_crop=False, intensity="none"))
    assert np.array_equal(image, np.asarray(scan))


def test_files_and_bytes_give_the_same_square(tmp_path):
    path = tmp_path / "scan.png"
    Image.fromarray(_scan_with_border_and_label()).save(path)
    prep = ScanPrep(size=64, head_crop=True, intensity="equalize")
    from_file = load_image(path, prep, limits=ImageLimits(max_pixels=10**7))
    assert np.array_equal(from_file, load_image(path.read_bytes(), prep, limits=ImageLimits(max_pixels=10**7)))
    assert np.array_equal(from_file, load_image(path, prep, limits=ImageLimits(max_pixels=10**7)))  # deterministic
