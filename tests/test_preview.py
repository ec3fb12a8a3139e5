"""The augmentation preview shows exactly the train preset (braintumor.preview, braintumor.model.transforms)."""

from __future__ import annotations

import dataclasses
import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from helpers import tiny_params

import braintumor.model.transforms
import braintumor.preview
from braintumor.data.validate import validate_dataset
from braintumor.model.transforms import Preprocessing, display_preset, eval_preset, train_preset
from braintumor.preview import preview_figure
from braintumor.scans.limits import ImageLimits


@pytest.fixture(scope="module")
def setup(sample_root):
    params = tiny_params(sample_root)
    manifest = validate_dataset(sample_root, params.data, workers=1, progress=False).manifest
    train_rows = manifest[manifest["split"] == "train"].reset_index(drop=True)
    return params, train_rows, Preprocessing.from_config(params.model, params.preprocess)


def render(setup, data_root, augment=None) -> plt.Figure:
    params, train_rows, prep = setup
    return preview_figure(
        train_rows, data_root, params.data.classes, prep, augment or params.augment, limits=ImageLimits.of(params.data)
    )


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


def _views(preset, image, n=8, seed=0):
    return preset(image.expand(n, 1, -1, -1), torch.Generator().manual_seed(seed))


def test_display_preset_is_the_train_preset_without_normalisation(setup):
    params, _, prep = setup
    train, display = train_preset(prep, params.augment), display_preset(prep, params.augment)
    assert type(display) is type(train)
    assert (display.prep, display.augment) == (train.prep, train.augment)
    assert train.normalise and not display.normalise


def test_a_training_input_is_the_previewed_view_normalised(setup):
    params, _, prep = setup
    image = torch.randint(0, 256, (1, prep.resize_size, prep.resize_size), dtype=torch.uint8)
    for seed in range(5):
        view = _views(display_preset(prep, params.augment), image, seed=seed)
        model_input = _views(train_preset(prep, params.augment), image, seed=seed)
        assert view.dtype == torch.uint8 and view.shape == (8, 1, prep.image_size, prep.image_size)
        assert model_input.shape == (8, 3, prep.image_size, prep.image_size)
        mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
        expected = (view.expand(-1, 3, -1, -1).float() / 255 - mean) / std
        torch.testing.assert_close(model_input, expected, atol=0.6 / 255 / min(prep.std), rtol=0)  # uint8 rounding


def test_one_scan_and_a_batch_give_the_same_result(setup):
    params, _, prep = setup
    image = torch.randint(0, 256, (1, prep.resize_size, prep.resize_size), dtype=torch.uint8)
    single = train_preset(prep, params.augment)(image, torch.Generator().manual_seed(3))
    batch = train_preset(prep, params.augment)(image[None], torch.Generator().manual_seed(3))
    torch.testing.assert_close(single, batch[0])
    torch.testing.assert_close(eval_preset(prep)(image), eval_preset(prep)(image[None])[0])


def test_eval_preset_is_a_centre_crop_to_the_model_input(setup):
    _, _, prep = setup
    image = torch.arange(prep.resize_size**2, dtype=torch.int64).reshape(1, prep.resize_size, -1)
    image = (image % 256).to(torch.uint8)
    out = eval_preset(prep)(image)
    off = (prep.resize_size - prep.image_size) // 2
    crop = image[:, off : off + prep.image_size, off : off + prep.image_size]
    mean, std = torch.tensor(prep.mean)[:, None, None], torch.tensor(prep.std)[:, None, None]
    torch.testing.assert_close(out, (crop.expand(3, -1, -1).float() / 255 - mean) / std)


def _off(params, **changes):
    base = dict(
        crop_scale=[1.0, 1.0],
        hflip=False,
        rotation_degrees=0.0,
        brightness=0.0,
        contrast=0.0,
        gamma=1.0,
        blur_sharpen=0.0,
        noise=0.0,
        intensity_curve=0.0,
    )
    return dataclasses.replace(params.augment, **{**base, **changes})


def test_everything_off_is_a_plain_resize_of_the_whole_scan(setup):
    params, _, prep = setup
    image = torch.randint(0, 256, (1, prep.resize_size, prep.resize_size), dtype=torch.uint8)
    views = _views(display_preset(prep, _off(params)), image)
    expected = (
        torch.nn.functional.interpolate(
            image[None].float(), size=(prep.image_size,) * 2, mode="bilinear", align_corners=False
        )
        .round()
        .to(torch.uint8)
    )
    assert (views.int() - expected.int()).abs().max() <= 1
    assert (views == views[0]).all()  # nothing random left


def test_flip_mirrors_some_views_left_to_right(setup):
    params, _, prep = setup
    ramp = torch.linspace(0, 255, prep.resize_size).round().to(torch.uint8).expand(1, prep.resize_size, -1)
    views = _views(display_preset(prep, _off(params, hflip=True)), ramp, n=16)
    rising = views[..., 0, -1] > views[..., 0, 0]  # (16, 1): left dark, right bright
    assert rising.any() and (~rising).any()
    unflipped = _views(display_preset(prep, _off(params)), ramp, n=16)
    assert (unflipped[..., 0, -1] > unflipped[..., 0, 0]).all()


def test_rotation_turns_the_corners_of_a_white_scan_black(setup):
    params, _, prep = setup
    white = torch.full((1, prep.resize_size, prep.resize_size), 255, dtype=torch.uint8)
    rotated = _views(display_preset(prep, _off(params, rotation_degrees=30.0)), white, n=16)
    assert (rotated[..., 0, 0] < 128).any()  # a corner left the scan
    assert (rotated[..., prep.image_size // 2, prep.image_size // 2] == 255).all()  # the centre did not
    straight = _views(display_preset(prep, _off(params)), white, n=16)
    assert (straight == 255).all()


@pytest.mark.parametrize("brightness, contrast", [(0.3, 0.0), (0.0, 0.4)])
def test_jitter_changes_intensity_only_when_switched_on(setup, brightness, contrast):
    params, _, prep = setup
    ramp = torch.linspace(40, 200, prep.resize_size).round().to(torch.uint8).expand(1, prep.resize_size, -1)
    views = _views(display_preset(prep, _off(params, brightness=brightness, contrast=contrast)), ramp, n=16)
    spread = views.float().std(dim=(1, 2, 3))  # contrast changes the spread, brightness the mean
    mean = views.float().mean(dim=(1, 2, 3))
    if brightness:
        assert mean.max() - mean.min() > 10
    else:
        assert spread.max() - spread.min() > 5 and (mean.max() - mean.min()) < 3


def test_gamma_bends_the_intensity_curve_each_scan_its_own_way(setup):
    params, _, prep = setup
    ramp = torch.linspace(0, 255, prep.resize_size).round().to(torch.uint8).expand(1, prep.resize_size, -1)
    views = _views(display_preset(prep, _off(params, gamma=2.0)), ramp, n=16).float()
    middle = views[:, 0, prep.image_size // 2, prep.image_size // 2]  # the ramp's mid-grey
    assert middle.max() - middle.min() > 40  # gamma < 1 brightens mid-grey, gamma > 1 darkens it
    assert (views[..., 0] < 30).all() and (views[..., -1] >= 240).all()  # black and white stay (nearly) put
    plain = _views(display_preset(prep, _off(params)), ramp, n=4)
    assert (plain == plain[0]).all()  # gamma 1 is off: nothing random


def test_intensity_curve_reorders_grey_levels_keeps_black_and_applies_to_its_share(setup):
    params, _, prep = setup
    ramp = torch.linspace(0, 255, prep.resize_size).round().to(torch.uint8).expand(1, prep.resize_size, -1)
    views = _views(display_preset(prep, _off(params, intensity_curve=1.0)), ramp, n=16).float()
    row = views[:, 0, prep.image_size // 2, 1:]  # left to right along the ramp, black column left out
    steps = row[:, 1:] - row[:, :-1]
    assert ((steps < -2).any(dim=1) & (steps > 2).any(dim=1)).sum() >= 4  # some curves go down and up again
    assert (views[..., 0] < 40).all()  # black stays (nearly) black: the background is kept
    plain = _views(display_preset(prep, _off(params)), ramp, n=1).float()
    some = _views(display_preset(prep, _off(params, intensity_curve=0.5)), ramp, n=32).float()
    untouched = ((some - plain).abs().amax(dim=(1, 2, 3)) <= 1).sum()
    assert 4 <= untouched <= 28  # about half the scans keep their grey levels


def test_blur_and_sharpen_change_edges_not_flat_areas(setup):
    params, _, prep = setup
    size = prep.resize_size
    edge = torch.zeros(1, size, size, dtype=torch.uint8)
    edge[:, :, size // 2 :] = 200  # a vertical edge; flat on either side
    views = _views(display_preset(prep, _off(params, blur_sharpen=1.0)), edge, n=16).float()
    plain = _views(display_preset(prep, _off(params)), edge, n=1).float()
    at_edge = (views - plain)[..., :, prep.image_size // 2 - 2 : prep.image_size // 2 + 2].abs().amax(dim=(1, 2, 3))
    assert (at_edge > 20).sum() >= 8  # most views blurred or sharpened the edge
    flat = (views - plain)[..., 4:-4, 4 : prep.image_size // 2 - 6].abs().max()
    assert flat <= 1  # flat regions unchanged


def test_noise_is_random_per_scan_and_reproducible_from_the_seed(setup):
    params, _, prep = setup
    grey = torch.full((1, prep.resize_size, prep.resize_size), 128, dtype=torch.uint8)
    preset = display_preset(prep, _off(params, noise=0.1))
    views = _views(preset, grey, n=8, seed=3).float()
    assert views.std(dim=(1, 2, 3)).max() > 5  # noisy
    assert not torch.equal(views[0], views[1])
    assert torch.equal(views, _views(preset, grey, n=8, seed=3).float())  # the same seed, the same noise


# ---- the preview figure -------------------------------------------------------------------------------------


def test_preview_views_come_from_the_train_preset_code(setup, sample_root, monkeypatch):
    params, _, prep = setup
    calls = []
    original = braintumor.model.transforms.TrainPreset.crop_flip_rotate

    def zoom_to_nothing(self, n, generator):  # every train view samples one point: a flat image
        calls.append(n)
        theta = original(self, n, generator)
        theta[:, :, :2] = 0.0
        return theta

    monkeypatch.setattr(braintumor.model.transforms.TrainPreset, "crop_flip_rotate", zoom_to_nothing)
    fig = render(setup, sample_root)
    try:
        assert calls and all(n == params.augment.preview_views for n in calls)
        nrows, ncols = grid(fig)
        axes = np.array(fig.axes).reshape(nrows, ncols)
        for row in axes:
            assert shown(row[0]).std() > 0 and shown(row[1]).std() > 0  # the scan as stored, and its eval view
            for ax in row[2:]:  # every train view went through the (patched) train preset
                assert shown(ax).std() == 0
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


def test_grid_has_one_row_per_picked_image_and_views_plus_two_columns(setup, sample_root):
    params, train_rows, prep = setup
    augment = dataclasses.replace(params.augment, preview_images_per_class=2, preview_views=3)
    fig = render(setup, sample_root, augment)
    try:
        classes = params.data.classes
        assert grid(fig) == (2 * len(classes), 3 + 2)
        assert len(fig.axes) == 2 * len(classes) * 5
        axes = np.array(fig.axes).reshape(2 * len(classes), 5)
        # Rows are grouped by class, two per class, each labelled with its class and file; no file twice.
        labels = [tuple(ax.get_ylabel().split("\n")) for ax in axes[:, 0]]
        assert [label for label, _ in labels] == [c for c in classes for _ in range(2)]
        assert len(set(labels)) == len(labels)
        assert set(labels) <= set(zip(train_rows["label"], train_rows["path"].map(lambda p: p.rsplit("/", 1)[-1])))
        for ax in axes[:, 1:].flat:  # every view after the stored scan is the model's input size
            assert shown(ax).shape == (prep.image_size, prep.image_size)
        assert shown(axes[0, 0]).shape == (64, 64)  # the sample's scans as stored
        assert [ax.get_title() for ax in axes[0]] == [
            "scan as stored",
            "preprocessed\n(eval view)",
            "train view 1",
            "train view 2",
            "train view 3",
        ]
    finally:
        plt.close(fig)


def test_grid_rows_are_capped_by_the_images_a_class_has(setup, sample_root):
    params, train_rows, _ = setup
    augment = dataclasses.replace(params.augment, preview_images_per_class=100, preview_views=1)
    fig = render(setup, sample_root, augment)
    try:
        assert grid(fig) == (len(train_rows), 3)
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
    fig = preview_figure(one_each, sample_root, params.data.classes, prep, augment, limits=ImageLimits.of(params.data))
    try:
        shown_rows = [tuple(ax.get_ylabel().split("\n")) for ax in np.array(fig.axes).reshape(-1, 3)[:, 0]]
        assert shown_rows == list(zip(one_each["label"], one_each["path"].map(lambda p: p.rsplit("/", 1)[-1])))
    finally:
        plt.close(fig)
