"""Temperature scaling: fitted on val, stored in the model file, applied wherever probabilities leave the model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_params

from braintumor.calibration import fit_temperature
from braintumor.evaluation import expected_calibration_error
from braintumor.inference import probabilities
from braintumor.model import Inference, build_model, save_model
from braintumor.serving import Predictor
from braintumor.transforms import Preprocessing


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
        save_model(paths[temperature], model, classes=params.data.classes, preprocessing=prep,
                   inference=Inference(temperature=temperature), params=params.to_dict(), metrics={})
    scan = next((sample_root / "Testing" / "glioma_tumor").iterdir()).read_bytes()
    plain, warm = (Predictor(paths[t]) for t in (1.0, 3.0))
    images = [plain.load_image(scan)]
    p1, p3 = plain.probabilities(images), warm.probabilities(images)
    logits = torch.from_numpy(np.log(p1))  # softmax is shift-invariant: log-probabilities are logits
    np.testing.assert_allclose(p3, probabilities(logits, 3.0), rtol=1e-9)
    assert p3.max() < p1.max()  # a higher temperature is less sure
    frame = pd.DataFrame({"image": [__import__("base64").b64encode(scan).decode()]})
    np.testing.assert_allclose(warm.predict_frame(frame)[params.data.classes].to_numpy(), p3, rtol=1e-9)
