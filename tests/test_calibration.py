"""Temperature scaling: fitted on val (and shifted copies of it), stored in the model file, applied wherever
probabilities leave the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_params

from braintumor.errors import ConfigError
from braintumor.evaluation.metrics import expected_calibration_error
from braintumor.model.calibration import fit_temperature, fitted_on
from braintumor.model.inference import probabilities
from braintumor.model.network import Inference, build_model, save_model
from braintumor.model.predictor import Predictor
from braintumor.model.transforms import Preprocessing, eval_preset, latin_hypercube, shifted_preset, stronger_intensity
from braintumor.pipeline import calibrate
from braintumor.serving.requests import answer_request
from braintumor.training.loop import TrainData


def _overconfident(n=4000, classes=4, true_temperature=2.5, seed=0):
    """Labels drawn from softmax(z), logits reported as z * 2.5: a model 2.5 times too sure of itself."""
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(rng.normal(0, 2.0, (n, classes)))
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=torch.Generator().manual_seed(seed))[:, 0]
    return z * true_temperature, labels


def test_fitted_temperature_recovers_the_overconfidence_and_lowers_ece():
    logits, labels = _overconfident()
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, rel=0.1)
    before = expected_calibration_error(labels.numpy(), probabilities(logits))
    after = expected_calibration_error(labels.numpy(), probabilities(logits, temperature))
    assert after < before / 2 and after < 0.04
    assert (probabilities(logits, temperature).argmax(1) == probabilities(logits).argmax(1)).all()  # same labels


def test_temperature_of_a_calibrated_model_stays_near_one_and_degenerate_input_gives_one():
    logits, labels = _overconfident(true_temperature=1.0)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    assert fit_temperature(torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long)) == 1.0


def test_predictor_applies_the_model_files_temperature(sample_root, tmp_path):
    params = tiny_params(sample_root)
    torch.manual_seed(0)
    model = build_model("none", 4)
    prep = Preprocessing.from_config(params.model, params.preprocess)
    paths = {}
    for temperature in (1.0, 3.0):
        paths[temperature] = tmp_path / f"t{temperature}.pt"
        save_model(
            paths[temperature],
            model,
            classes=params.data.classes,
            preprocessing=prep,
            inference=Inference(temperature=temperature),
            params=params.to_dict(),
            metrics={},
        )
    scan = next((sample_root / "Testing" / "glioma_tumor").iterdir()).read_bytes()
    plain, warm = (Predictor(paths[t]) for t in (1.0, 3.0))
    images = [plain.load_image(scan)]
    p1, p3 = plain.probabilities(images), warm.probabilities(images)
    logits = torch.from_numpy(np.log(p1))  # softmax is shift-invariant: log-probabilities are logits
    np.testing.assert_allclose(p3, probabilities(logits, 3.0), rtol=1e-9)
    assert p3.max() < p1.max()  # a higher temperature is less sure
    frame = pd.DataFrame({"image": [__import__("base64").b64encode(scan).decode()]})
    np.testing.assert_allclose(answer_request(warm, frame)[params.data.classes].to_numpy(), p3, rtol=1e-9)


class _BrightnessClassifier(torch.nn.Module):
    """Calls a scan bright (class 1) or dark (class 0) by its mean intensity, very sure of itself: right on clean
    scans, confidently wrong once gamma, brightness or contrast move the mean across the line (another scanner)."""

    def __init__(self) -> None:
        super().__init__()
        self.sharpness = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mean = images[:, 0].mean(dim=(1, 2))  # normalised with ImageNet's red statistics: 0 is about 0.485
        return torch.stack([-self.sharpness * mean, self.sharpness * mean], dim=1)


def _scan_data(n: int = 40, size: int = 40) -> TrainData:
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    levels = np.where(labels == 1, 175, 75)[:, None, None] + rng.integers(-10, 10, (n, 1, 1))
    images = np.broadcast_to(levels, (n, size, size)).astype(np.uint8).copy()
    return TrainData(images[:0], labels[:0], images, labels, ["dark", "bright"])


@pytest.mark.parametrize("method", ["val", "shifted", "none"])
def test_calibration_method_decides_what_the_temperature_is_fitted_on(sample_root, method):
    params = tiny_params(
        sample_root,
        train={"calibration": method},
        augment={"gamma": 1.5, "contrast": 0.3},
        model={"image_size": 32, "resize_size": 40, "tta_hflip": False},
    )
    prep = Preprocessing.from_config(params.model, params.preprocess)
    inference = calibrate(_BrightnessClassifier(), _scan_data(), prep, params)
    assert inference.calibration == method
    if method == "none":
        assert inference.temperature == 1.0
    elif method == "val":  # always right and sure on val: the fit sharpens further
        assert inference.temperature < 1.0
    else:  # the shifted copies hold confident mistakes: the one T must soften
        assert inference.temperature > 1.0


def test_shifted_copies_are_seeded_scaled_intensity_augmentation_without_geometry(sample_root):
    params = tiny_params(
        sample_root,
        augment={
            "gamma": 1.5,
            "brightness": 0.2,
            "contrast": 0.4,
            "blur_sharpen": 0.3,
            "noise": 0.02,
            "intensity_curve": 0.5,
            "rotation_degrees": 30,
        },
    )
    stronger = stronger_intensity(params.augment, 3.0)
    assert stronger.gamma == pytest.approx(1.5**3) and stronger.brightness == pytest.approx(0.6)
    assert stronger.contrast == 0.95 and stronger.blur_sharpen == pytest.approx(0.9)  # contrast kept < 1
    assert stronger.noise == pytest.approx(0.06) and stronger.intensity_curve == 0.0
    assert stronger.rotation_degrees == 30  # geometry is not used by the shifted preset at all
    prep = Preprocessing.from_config(params.model, params.preprocess)
    images = torch.from_numpy(_scan_data().val_images[:8, None])
    clean = eval_preset(prep)(images)

    def shifted(seed, strength=2.0):
        return shifted_preset(prep, params.augment, strength, seed, len(images))(images, torch.arange(len(images)))

    assert shifted(1).shape == clean.shape
    torch.testing.assert_close(shifted(1), shifted(1))  # a seeded copy repeats
    assert not torch.allclose(shifted(1), shifted(2))
    assert (shifted(1, 3.0) - clean).abs().mean() > (shifted(1, 1.0) - clean).abs().mean()  # stronger shifts more


def test_a_shifted_copy_is_drawn_per_scan_so_batching_cannot_change_it(sample_root):
    params = tiny_params(
        sample_root, augment={"gamma": 1.5, "contrast": 0.3, "noise": 0.05}, model={"image_size": 32, "resize_size": 40}
    )
    prep = Preprocessing.from_config(params.model, params.preprocess)
    images = torch.from_numpy(_scan_data().val_images[:, None])
    preset = shifted_preset(prep, params.augment, 2.0, 7, len(images))
    whole = preset(images, torch.arange(len(images)))
    torch.testing.assert_close(preset(images[5:6], torch.tensor([5])), whole[5:6])  # scan 5 alone, noise included
    torch.testing.assert_close(
        torch.cat([preset(images[i : i + 3], torch.arange(i, min(i + 3, 40))) for i in range(0, 40, 3)]), whole
    )
    temperatures = {
        size: calibrate(
            _BrightnessClassifier(),
            _scan_data(),
            prep,
            tiny_params(
                sample_root,
                augment={"gamma": 1.5, "contrast": 0.3, "noise": 0.05},
                model={"image_size": 32, "resize_size": 40, "tta_hflip": False},
                evaluate={"batch_size": size},
            ),
        ).temperature
        for size in (3, 16)
    }
    assert temperatures[3] == pytest.approx(temperatures[16], rel=1e-9)  # evaluate.batch_size: 0.93 vs 0.99 before
    assert temperatures[3] > 1.0


def test_latin_hypercube_puts_one_draw_in_each_stratum_of_every_column():
    table = latin_hypercube(50, 6, torch.Generator().manual_seed(0))
    assert table.shape == (50, 6) and table.min() >= 0 and table.max() < 1
    for column in table.T:
        assert sorted((column * 50).floor().long().tolist()) == list(range(50))
    assert not torch.equal(table[:, 0], table[:, 1])  # columns shuffled independently


def test_shifted_calibration_needs_intensity_augmentation(sample_root):
    no_intensity = {"brightness": 0.0, "contrast": 0.0, "gamma": 1.0, "blur_sharpen": 0.0, "noise": 0.0}
    with pytest.raises(ConfigError, match="train.calibration = 'shifted' is not allowed: expected val or none"):
        tiny_params(sample_root, augment=no_intensity, train={"calibration": "shifted"})
    assert tiny_params(sample_root, augment=no_intensity, train={"calibration": "val"}).train.calibration == "val"
    with pytest.raises(ConfigError, match="train.calibration"):
        tiny_params(sample_root, train={"calibration": "test"})


def test_report_and_model_card_say_what_the_temperature_was_fitted_on():
    assert fitted_on("val") == "fitted on val (train.calibration: val)"
    assert "6 copies of it" in fitted_on("shifted") and "2 at each of 1, 2, 3x" in fitted_on("shifted")
    assert "T = 1" in fitted_on("none")
