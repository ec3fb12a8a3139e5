"""The augmentation preview shows exactly the train preset (braintumor.preview, braintumor.transforms)."""

from __future__ import annotations

import dataclasses
import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

import braintumor.preview
import braintumor.transforms
from braintumor.data.validate import validate_dataset
from braintumor.preview import preview_figure
from braintumor.transforms import Preprocessing, display_preset, eval_preset, train_preset

from conftest import tiny_params

AUGMENT_STEPS = (v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandomRotation, v2.ColorJitter)


@pytest.fixture(scope="module")
def setup(sample_root):
    params = tiny_params(sample_root)
    manifest = validate_dataset(sample_root, params.data, workers=1, progress=False).manifest
    train_rows = manifest[manifest["split"] == "train"].reset_index(drop=True)
    return params, train_rows, Preprocessing.from_config(params.model)


def render(setup, data_root, augment=None) -> plt.Figure:
    params, train_rows, prep = setup
    return preview_figure(train_rows, data_root, params.data.classes, prep, augment or params.augment,
                          max_pixels=params.data.max_image_pixels)


def png_bytes(fig: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    plt.close(fig)
    return buffer.getvalue()


def grid(fig: plt.Figure) -> tuple[int, int]:
    nrows, ncols, _, _ = fig.axes[0].get_subplotspec().get_geometry()
    return nrows, ncols


def shown(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


# ---- transforms: the display preset is the train preset ----------------------------------------------------

def test_display_preset_is_the_train_preset_without_the_model_input_steps(setup):
    params, _, prep = setup
    train_steps = train_preset(prep, params.augment).transforms
    display_steps = display_preset(prep, params.augment).transforms
    # The last three train steps turn the uint8 view into the network's input; everything before is augmentation.
    assert [type(t) for t in train_steps[-3:]] == [v2.Lambda, v2.ToDtype, v2.Normalize]
    assert len(display_steps) == len(train_steps) - 3
    assert [type(t) for t in display_steps] == [type(t) for t in train_steps[:-3]] == list(AUGMENT_STEPS)
    # Same parameters, step by step (torchvision's repr lists each transform's settings).
    assert [repr(t) for t in display_steps] == [repr(t) for t in train_steps[:-3]]
    crop, _, rotation, jitter = display_steps
    assert list(crop.size) == [prep.image_size, prep.image_size]
    assert tuple(crop.scale) == tuple(params.augment.crop_scale)
    assert list(rotation.degrees) == [-params.augment.rotation_degrees, params.augment.rotation_degrees]
    assert jitter.brightness == pytest.approx((1 - params.augment.brightness, 1 + params.augment.brightness))
    assert jitter.contrast == pytest.approx((1 - params.augment.contrast, 1 + params.augment.contrast))


def test_a_training_input_is_the_previewed_view_normalised(setup):
    params, _, prep = setup
    square = torch.randint(0, 256, (1, prep.resize_size, prep.resize_size), dtype=torch.uint8)
    for seed in range(5):
        torch.manual_seed(seed)
        view = display_preset(prep, params.augment)(square)
        torch.manual_seed(seed)
        model_input = train_preset(prep, params.augment)(square)
        assert view.dtype == torch.uint8 and view.shape == (1, prep.image_size, prep.image_size)
        assert model_input.shape == (3, prep.image_size, prep.image_size)
        mean, std = torch.tensor(prep.mean)[:, None, None], torch.tensor(prep.std)[:, None, None]
        expected = (view.expand(3, -1, -1).float() / 255 - mean) / std
        torch.testing.assert_close(model_input, expected)


def test_eval_preset_is_a_centre_crop_to_the_model_input(setup):
    _, _, prep = setup
    square = torch.arange(prep.resize_size ** 2, dtype=torch.int64).reshape(1, prep.resize_size, -1)
    square = (square % 256).to(torch.uint8)
    out = eval_preset(prep)(square)
    off = (prep.resize_size - prep.image_size) // 2
    crop = square[:, off:off + prep.image_size, off:off + prep.image_size]
    mean, std = torch.tensor(prep.mean)[:, None, None], torch.tensor(prep.std)[:, None, None]
    torch.testing.assert_close(out, (crop.expand(3, -1, -1).float() / 255 - mean) / std)


@pytest.mark.parametrize("off, removed", [
    ({"hflip": False}, v2.RandomHorizontalFlip),
    ({"rotation_degrees": 0.0}, v2.RandomRotation),
    ({"brightness": 0.0, "contrast": 0.0}, v2.ColorJitter),
])
def test_switching_an_augmentation_off_removes_its_transform(setup, off, removed):
    params, _, prep = setup
    augment = dataclasses.replace(params.augment, **off)
    for preset in (train_preset(prep, augment).transforms, display_preset(prep, augment).transforms):
        types = [type(t) for t in preset]
        assert removed not in types
        assert v2.RandomResizedCrop in types  # the crop is always there
    kept = [t for t in AUGMENT_STEPS if t is not removed]
    assert [type(t) for t in display_preset(prep, augment).transforms] == kept


def test_everything_off_leaves_only_the_crop(setup):
    params, _, prep = setup
    augment = dataclasses.replace(params.augment, hflip=False, rotation_degrees=0.0, brightness=0.0, contrast=0.0)
    assert [type(t) for t in display_preset(prep, augment).transforms] == [v2.RandomResizedCrop]


@pytest.mark.parametrize("brightness, contrast", [(0.3, 0.0), (0.0, 0.4)])
def test_one_jitter_kept_when_the_other_is_off(setup, brightness, contrast):
    params, _, prep = setup
    augment = dataclasses.replace(params.augment, brightness=brightness, contrast=contrast)
    jitters = [t for t in display_preset(prep, augment).transforms if isinstance(t, v2.ColorJitter)]
    assert len(jitters) == 1
    assert (jitters[0].brightness is None) == (brightness == 0)
    assert (jitters[0].contrast is None) == (contrast == 0)


# ---- the preview figure -------------------------------------------------------------------------------------

def test_preview_views_come_from_the_train_preset(setup, sample_root, monkeypatch):
    params, _, prep = setup
    calls = []

    def blackout_train_preset(prep_arg, augment_arg):
        calls.append((prep_arg, augment_arg))
        steps = [v2.RandomResizedCrop(prep_arg.image_size), v2.Lambda(torch.zeros_like)]
        return v2.Compose(steps + [v2.Identity()] * 3)  # 3 stand-ins for the model-input steps

    monkeypatch.setattr(braintumor.transforms, "train_preset", blackout_train_preset)
    fig = render(setup, sample_root)
    try:
        assert calls == [(prep, params.augment)]
        nrows, ncols = grid(fig)
        axes = np.array(fig.axes).reshape(nrows, ncols)
        for row in axes:
            assert shown(row[0]).max() > 0  # the eval view is the scan
            for ax in row[1:]:  # every train view went through the (patched) train preset
                assert shown(ax).max() == 0
    finally:
        plt.close(fig)


def test_preview_uses_display_preset_with_the_run_params(setup, sample_root, monkeypatch):
    params, _, prep = setup
    calls = []

    def spy(prep_arg, augment_arg):
        calls.append((prep_arg, augment_arg))
        return display_preset(prep_arg, augment_arg)

    monkeypatch.setattr(braintumor.preview, "display_preset", spy)
    plt.close(render(setup, sample_root))
    assert calls == [(prep, params.augment)]


def test_grid_has_one_row_per_picked_image_and_views_plus_one_columns(setup, sample_root):
    params, train_rows, prep = setup
    augment = dataclasses.replace(params.augment, preview_images_per_class=2, preview_views=3)
    fig = render(setup, sample_root, augment)
    try:
        classes = params.data.classes
        assert grid(fig) == (2 * len(classes), 3 + 1)
        assert len(fig.axes) == 2 * len(classes) * 4
        axes = np.array(fig.axes).reshape(2 * len(classes), 4)
        # Rows are grouped by class, two per class, each labelled with its class and file; no file twice.
        labels = [tuple(ax.get_ylabel().split("\n")) for ax in axes[:, 0]]
        assert [label for label, _ in labels] == [c for c in classes for _ in range(2)]
        assert len(set(labels)) == len(labels)
        assert set(labels) <= set(zip(train_rows["label"], train_rows["path"].map(lambda p: p.rsplit("/", 1)[-1])))
        for ax in axes.flat:  # every view is the model's input size
            assert shown(ax).shape == (prep.image_size, prep.image_size)
        assert [ax.get_title() for ax in axes[0]] == ["eval view", "train view 1", "train view 2", "train view 3"]
    finally:
        plt.close(fig)


def test_grid_rows_are_capped_by_the_images_a_class_has(setup, sample_root):
    params, train_rows, _ = setup
    augment = dataclasses.replace(params.augment, preview_images_per_class=100, preview_views=1)
    fig = render(setup, sample_root, augment)
    try:
        assert grid(fig) == (len(train_rows), 2)
    finally:
        plt.close(fig)


def test_preview_is_deterministic_for_a_seed(setup, sample_root):
    params, _, _ = setup
    first = png_bytes(render(setup, sample_root))
    torch.manual_seed(12345)  # the global RNG state before the call must not matter
    np.random.seed(12345)
    second = png_bytes(render(setup, sample_root))
    assert first == second
    other_seed = dataclasses.replace(params.augment, preview_seed=params.augment.preview_seed + 1)
    assert png_bytes(render(setup, sample_root, other_seed)) != first


def test_only_the_rows_given_are_shown(setup, sample_root):
    params, train_rows, prep = setup
    one_each = train_rows.groupby("label").head(1)
    augment = dataclasses.replace(params.augment, preview_images_per_class=3, preview_views=1)
    fig = preview_figure(one_each, sample_root, params.data.classes, prep, augment,
                         max_pixels=params.data.max_image_pixels)
    try:
        shown_rows = [tuple(ax.get_ylabel().split("\n")) for ax in np.array(fig.axes).reshape(-1, 2)[:, 0]]
        assert shown_rows == list(zip(one_each["label"], one_each["path"].map(lambda p: p.rsplit("/", 1)[-1])))
    finally:
        plt.close(fig)
