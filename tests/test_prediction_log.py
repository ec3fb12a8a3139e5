"""The prediction log (BRAINTUMOR_PREDICTION_LOG): what a line holds, that concurrent writers never interleave or
lose a line across rotations, and that a log that cannot be written costs a warning, never an answer."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pytest
from helpers import predict

from braintumor.serving.prediction_log import LOG_ENV, PredictionLog, read_log

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


def test_predict_logs_one_line_per_scan_without_names_or_pixels(
    capsys, monkeypatch, tmp_path, sample_root, novelty_model_file
):
    model, _ = novelty_model_file
    scans = sorted((sample_root / "Testing").rglob("*.jpg"))[:5]
    monkeypatch.setenv(LOG_ENV, str(tmp_path / "logs") + "/")  # a folder: <folder>/predictions.jsonl
    code, out, err = predict(capsys, *map(str, scans), "--model", str(model), "--output", str(tmp_path / "p.json"))
    assert code == 0, err
    lines = (tmp_path / "logs" / "predictions.jsonl").read_text().splitlines()
    answers = json.loads((tmp_path / "p.json").read_text())
    assert len(lines) == len(scans) == len(answers)
    for line, scan, answer in zip(lines, scans, answers):
        record = json.loads(line)
        assert set(record) == {
            "time",
            "source",
            "model",
            "version",
            "run_id",
            "sha256",
            "frame",
            "label",
            "probability",
            "probabilities",
            "novelty",
            "unlike_training",
            "novelty_quantile",
            "latency_ms",
            "pictures_in_request",
        }
        assert record["sha256"] == hashlib.sha256(scan.read_bytes()).hexdigest()
        assert record["time"].endswith("Z") and record["source"] == "predict" and record["frame"] == 0
        assert record["label"] == answer["label"] and record["unlike_training"] == answer["unlike_training"]
        assert record["novelty"] == pytest.approx(answer["novelty"], abs=1e-9)
        assert list(record["probabilities"]) == CLASSES
        assert sum(record["probabilities"].values()) == pytest.approx(1, abs=1e-6)
        assert record["novelty_quantile"] == 0.5 and record["pictures_in_request"] == len(scans)
        assert record["model"] == "brain-tumor-classifier" and record["latency_ms"] > 0
        for private in (scan.name, scan.stem, str(sample_root)):  # no file name, no folder
            assert private not in line


def test_an_unwritable_log_costs_a_warning_not_the_answer(
    capsys, monkeypatch, tmp_path, sample_root, model_file, caplog
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(LOG_ENV, str(blocker / "predictions.jsonl"))  # its "folder" is a file
    scan = next((sample_root / "Testing").rglob("*.jpg"))
    code, out, err = predict(capsys, str(scan), "--model", str(model_file))
    assert code == 0, err
    assert str(scan) in out  # the answer
    assert any("prediction log" in r.getMessage() and "not written" in r.getMessage() for r in caplog.records)


def _writer(path: str, worker: int, answers: int, max_bytes: int) -> None:
    log = PredictionLog(path, max_bytes=max_bytes, backups=50)
    for i in range(answers):
        pictures = 1 + i % 3  # an answer of 1 to 3 pictures goes out in one write
        log.write(
            [
                {
                    "time": "2026-12-03T00:00:00Z",
                    "label": "no_tumor",
                    "probability": 0.5,
                    "worker": worker,
                    "answer": i,
                    "picture": j,
                    "padding": "x" * (200 + 37 * worker),
                }
                for j in range(pictures)
            ]
        )


def test_concurrent_writers_never_interleave_or_lose_a_line_across_rotations(tmp_path):
    path = tmp_path / "predictions.jsonl"
    workers, answers, max_bytes = 4, 150, 40_000
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_writer, args=(str(path), w, answers, max_bytes)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    files = PredictionLog(path).files()
    assert len(files) > 5  # it rotated, many times
    assert all(f.stat().st_size <= max_bytes for f in files)
    seen = []
    for file in files:
        for line in file.read_text().splitlines():
            record = json.loads(line)  # an interleaved line would not parse
            assert record["padding"] == "x" * (200 + 37 * record["worker"])
            seen.append((record["worker"], record["answer"], record["picture"]))
    expected = {(w, i, j) for w in range(workers) for i in range(answers) for j in range(1 + i % 3)}
    assert len(seen) == len(expected) and set(seen) == expected
    for w in range(workers):  # each writer's answers, oldest file first, in the order it wrote them
        order = [(i, j) for worker, i, j in seen if worker == w]
        assert order == sorted(order)
    frame, bad = read_log(path)
    assert len(frame) == len(expected) and bad == 0


def test_rotation_keeps_the_newest_backups_only(tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl", max_bytes=1_000, backups=2)
    for i in range(40):
        assert log.write([{"time": "2026-12-03T00:00:00Z", "label": "no_tumor", "i": i, "pad": "y" * 100}])
    assert [p.name for p in log.files()] == ["p.jsonl.2", "p.jsonl.1", "p.jsonl"]
    frame, _ = read_log(tmp_path / "p.jsonl")
    assert frame["i"].tolist() == list(range(40 - len(frame), 40))  # the newest, in order


def test_read_log_counts_a_cut_line(tmp_path):
    path = Path(tmp_path / "p.jsonl")
    path.write_text('{"time": "2026-12-03T00:00:00Z", "label": "no_tumor", "probability": 0.9}\n{"time": "2026-1')
    frame, bad = read_log(path)
    assert len(frame) == 1 and bad == 1
