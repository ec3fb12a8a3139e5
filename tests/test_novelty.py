"""The novelty score and the `unlike_training` flag: fitted from features, saved in the model file, and carried
to predict's and the served model's rows (model files without it still predict, without its columns)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from helpers import predict, tiny_params

from braintumor.config import params_from_dict
from braintumor.errors import ConfigError
from braintumor.evaluation.metrics import novelty_metrics
from braintumor.model.network import load_model
from braintumor.model.novelty import Novelty, fit_novelty
from braintumor.model.predictor import Predictor


def _clusters(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
    """n features per class around four class means in 64 dimensions (the last four correlated), plus `shift`."""
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(4), n)
    means = torch.zeros(4, 64)
    means[torch.arange(4), torch.arange(4)] = 6.0
    x = means[labels] + torch.randn(len(labels), 64, generator=g)
    x[:, -4:] += 3 * torch.randn(len(labels), 1, generator=g)  # a shared direction of large spread
    return (x + shift).double(), labels


def test_scans_like_training_are_flagged_at_the_chosen_rate_and_far_ones_always():
    train, labels = _clusters(200, seed=0)
    val, _ = _clusters(50, seed=1)
    novelty = fit_novelty(train, labels, val, quantile=0.9)
    assert np.mean(novelty.scores(val) > 1) == pytest.approx(0.1, abs=0.01)  # the threshold is val's 90% point
    fresh, _ = _clusters(500, seed=2)  # more scans like the Training ones: about 10% flagged too
    assert 0.04 < np.mean(novelty.scores(fresh) > 1) < 0.2
    far, _ = _clusters(50, seed=3, shift=4.0)  # another source: everything moved
    assert np.all(novelty.scores(far) > 1)
    # Along the shared direction of large spread the same step is less unusual than across it: the covariance counts
    along, across = val[:1].clone(), val[:1].clone()
    along[:, -4:] += 6.0
    across[:, 10:14] += 6.0
    assert novelty.scores(along)[0] < novelty.scores(across)[0]


def test_novelty_metrics_split_the_scans_by_the_flag():
    y_true = np.array([0, 1, 2, 3, 0])
    probs = np.eye(4)[[0, 1, 0, 0, 0]]  # scans 2 and 3 wrong
    figures = novelty_metrics(y_true, probs, np.array([0.5, 0.9, 1.5, 3.0, 1.2]), 0.95)
    assert figures.n_flagged == 3 and figures.flagged_share == pytest.approx(0.6)
    assert figures.accuracy_flagged == pytest.approx(1 / 3) and figures.accuracy_unflagged == 1.0
    assert figures.error_auroc == pytest.approx(1.0)  # both wrong answers score above every right one
    assert figures.quantile == 0.95
    nothing = novelty_metrics(y_true, probs, np.zeros(5), 0.95)
    assert nothing.n_flagged == 0 and nothing.accuracy_flagged is None


@pytest.mark.parametrize("value", [1.0, 0.3, -0.1])
def test_a_bad_quantile_is_refused_naming_the_key(sample_root, value):
    spec = tiny_params(sample_root).to_dict()
    spec["model"]["unlike_training_quantile"] = value
    with pytest.raises(ConfigError, match="model.unlike_training_quantile"):
        params_from_dict(spec)


def test_the_score_survives_the_model_file_and_predict_reports_it(capsys, sample_root, novelty_model_file, tmp_path):
    path, fitted = novelty_model_file
    _, bundle = load_model(path)
    loaded = Novelty.from_dict(bundle["novelty"])
    assert torch.equal(loaded.precision, fitted.precision) and loaded.threshold == fitted.threshold
    scans = sorted((sample_root / "Training").rglob("*.jpg"))
    output = tmp_path / "predictions.json"
    code, out, err = predict(capsys, *map(str, scans), "--model", str(path), "--output", str(output))
    assert code == 0, err
    rows = json.loads(output.read_text())
    assert list(rows[0])[-2:] == ["novelty", "unlike_training"]
    predictor = Predictor(path)
    _, expected = predictor.predict([predictor.load_image(p) for p in scans])
    np.testing.assert_allclose([r["novelty"] for r in rows], expected, rtol=1e-9)
    flagged = [r["unlike_training"] for r in rows]
    assert flagged == [bool(v > 1) for v in expected] and 0 < sum(flagged) < len(rows)  # half, at the median
    assert len(re.findall(r"unlike the Training scans \(novelty \d", out)) == sum(flagged)
    assert f"{sum(flagged)} of {len(rows)} rows unlike the Training scans" in out


def test_a_model_file_without_the_score_predicts_without_its_columns(capsys, model_file, sample_root, tmp_path):
    predictor = Predictor(model_file)
    assert predictor.novelty is None
    probs, novelty = predictor.predict([predictor.load_image(next((sample_root / "Testing").rglob("*.jpg")))])
    assert novelty is None and probs.shape == (1, 4)
    output = tmp_path / "predictions.csv"
    code, out, err = predict(capsys, str(sample_root / "Testing"), "--model", str(model_file), "--output", str(output))
    assert code == 0, err
    assert "novelty" not in output.read_text().splitlines()[0] and "unlike the Training" not in out
