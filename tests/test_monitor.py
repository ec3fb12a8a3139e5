"""`braintumor monitor`: a drifted log fires the right alert, a log like the reference fires none, versions are
tested apart, and --fail-on-drift makes a nightly job fail."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from braintumor.cli import main
from braintumor.serving.prediction_log import PredictionLog

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
MIX = [0.3, 0.3, 0.15, 0.25]


def _reference(path, rng, n=400):
    """Evaluation's predictions.csv: its columns, a class mix and confident answers."""
    predicted = rng.choice(CLASSES, size=n, p=MIX)
    table = pd.DataFrame(
        {
            "path": [f"data/Testing/{c}/{i}.jpg" for i, c in enumerate(predicted)],
            "actual": predicted,
            "predicted": predicted,
            "probability": rng.beta(8, 1.5, size=n),
        }
    )
    table.to_csv(path, index=False)
    return table


def _answers(rng, n, *, mix=MIX, confidence=(8, 1.5), unlike_rate=0.05, version="3", day="2026-12-0{}"):
    labels = rng.choice(CLASSES, size=n, p=mix)
    probability = rng.beta(*confidence, size=n)
    novelty = np.where(rng.random(n) < unlike_rate, rng.uniform(1.01, 3, n), rng.uniform(0.1, 0.99, n))
    return [
        {
            "time": f"{day.format(1 + i % 3)}T10:00:00.000000Z",
            "source": "serve",
            "model": "brain-tumor-classifier",
            "version": version,
            "run_id": "abc123def456",
            "sha256": f"{i:064x}",
            "frame": 0,
            "label": label,
            "probability": float(p),
            "probabilities": {c: float(p) if c == label else float(1 - p) / 3 for c in CLASSES},
            "novelty": float(v),
            "unlike_training": bool(v > 1),
            "novelty_quantile": 0.95,
            "latency_ms": 120.0,
            "pictures_in_request": 1,
        }
        for i, (label, p, v) in enumerate(zip(labels, probability, novelty))
    ]


def _monitor(capsys, *args):
    try:
        main(["monitor", *map(str, args)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    _reference(tmp_path / "predictions.csv", rng)
    return tmp_path, rng


def test_a_log_like_the_reference_fires_no_alert(setup, capsys):
    folder, rng = setup
    PredictionLog(folder / "log.jsonl").write(_answers(rng, 300))
    code, out, err = _monitor(
        capsys,
        folder / "log.jsonl",
        "--reference",
        folder / "predictions.csv",
        "--output-dir",
        folder / "reports",
        "--fail-on-drift",
    )
    assert code == 0, err
    assert "300 answers, 1 model versions (1 tested), 0 alerts" in out
    result = json.loads((folder / "reports" / "monitor.json").read_text())
    assert result["alerts"] == []
    tests = result["versions"][0]["tests"]
    assert set(tests) == {"class_mix", "confidence", "unlike_training"}
    assert all(t["p_value"] > 0.01 for t in tests.values())
    assert result["versions"][0]["per_day"] == {"2026-12-01": 100, "2026-12-02": 100, "2026-12-03": 100}
    page = (folder / "reports" / "monitor.html").read_text()
    assert "None: every tested version answers like the reference" in page
    assert "http://" not in page and "https://" not in page and page.count("data:image/png;base64,") == 1


@pytest.mark.parametrize(
    "drift, test, words",
    [
        ({"mix": [1.0, 0, 0, 0]}, "chi-square (class mix)", "glioma_tumor: 100% of the answers against"),
        ({"confidence": (2, 2)}, "two-sample Kolmogorov-Smirnov (confidence)", "median top probability 0.5"),
        ({"unlike_rate": 0.4}, "binomial (unlike_training share)", "unlike the Training scans, against 5% by design"),
    ],
    ids=["one-class-only", "unsure", "far-from-training"],
)
def test_a_drifted_log_fires_its_alert_only_and_fails_the_nightly_job(setup, capsys, drift, test, words):
    folder, rng = setup
    PredictionLog(folder / "log.jsonl").write(_answers(rng, 300, **drift))
    code, out, err = _monitor(
        capsys,
        folder / "log.jsonl",
        "--reference",
        folder / "predictions.csv",
        "--output-dir",
        folder / "reports",
        "--fail-on-drift",
    )
    assert code == 1, (out, err)
    alerts = json.loads((folder / "reports" / "monitor.json").read_text())["alerts"]
    assert [a["test"] for a in alerts] == [test]
    assert alerts[0]["version"] == "brain-tumor-classifier v3" and alerts[0]["p_value"] < 0.01
    assert words in alerts[0]["figures"] and alerts[0]["look_at"]
    assert f"ALERT brain-tumor-classifier v3: {test}" in out
    page = (folder / "reports" / "monitor.html").read_text()
    assert "<h2>Alerts</h2><ul class=warn>" in page and words in page


def test_versions_are_tested_apart_and_since_keeps_the_later_answers(setup, capsys):
    folder, rng = setup
    log = PredictionLog(folder / "log.jsonl")
    log.write(_answers(rng, 200, version="2", day="2026-11-0{}"))
    log.write(_answers(rng, 200, version="3", mix=[0.05, 0.05, 0.85, 0.05]))
    log.write(_answers(rng, 10, version="4"))
    code, out, err = _monitor(
        capsys, folder / "log.jsonl", "--reference", folder / "predictions.csv", "--output-dir", folder / "reports"
    )
    assert code == 0, err  # alerts, but no --fail-on-drift
    result = json.loads((folder / "reports" / "monitor.json").read_text())
    assert [v["version"] for v in result["versions"]] == [f"brain-tumor-classifier v{n}" for n in (2, 3, 4)]
    assert [a["version"] for a in result["alerts"]] == ["brain-tumor-classifier v3"]
    assert result["versions"][2]["note"] == "10 answers: fewer than 30, no test"

    code, out, err = _monitor(
        capsys,
        folder / "log.jsonl",
        "--reference",
        folder / "predictions.csv",
        "--output-dir",
        folder / "reports",
        "--since",
        "2026-12-01",
    )
    result = json.loads((folder / "reports" / "monitor.json").read_text())
    assert result["answers"] == 210 and [v["version"][-2:] for v in result["versions"]] == ["v3", "v4"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.jsonl"], "prediction log missing.jsonl not found"),
        (["log.jsonl", "--reference", "nowhere.csv"], "reference nowhere.csv not found: run `dvc repro evaluate`"),
        (["log.jsonl", "--since", "last tuesday"], "--since last tuesday: give a date such as 2026-12-01"),
        (["log.jsonl", "--since", "2027-01-01"], "no answers in log.jsonl since 2027-01-01"),
    ],
)
def test_mistakes_are_named(setup, capsys, monkeypatch, args, message):
    folder, rng = setup
    monkeypatch.chdir(folder)
    PredictionLog(folder / "log.jsonl").write(_answers(rng, 40))
    code, out, err = _monitor(capsys, *args, *([] if "--reference" in args else ["--reference", "predictions.csv"]))
    assert code == 2 and message in err, err
