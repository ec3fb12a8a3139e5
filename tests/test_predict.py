"""`braintumor predict`: files and folders, unreadable files, --output, --gradcam and its errors (exit 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import BIN, predict, run
from PIL import Image

from braintumor.model.predictor import Predictor

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


@pytest.fixture
def scans(sample_root, tmp_path):
    """`my scans/` holding two class folders whose files share names, one of them in a folder with a space."""
    root = tmp_path / "my scans"
    for name, source in (("glioma", "glioma_tumor"), ("no tumor", "no_tumor")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            shutil.copy(sample_root / "Testing" / source / f"te_{i:04d}.jpg", root / name / f"scan {i}.jpg")
    return root


def test_files_and_folders_are_read_recursively(capsys, model_file, scans, sample_root, tmp_path):
    single = tmp_path / "one more scan.jpg"
    shutil.copy(sample_root / "Testing" / "pituitary_tumor" / "te_0000.jpg", single)
    code, out, err = predict(capsys, str(scans), str(single), "--model", str(model_file))
    assert code == 0, err
    expected = sorted(scans.rglob("*.jpg")) + [single]
    lines = out.splitlines()
    assert len(lines) == len(expected) == 5
    for line, path in zip(lines, expected):
        assert line.startswith(str(path))
        label, probability = line[len(str(path)) :].split()
        assert label in CLASSES and 0.25 <= float(probability) <= 1


def test_unreadable_files_are_reported_and_skipped(capsys, model_file, scans, tmp_path):
    (scans / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (scans / "empty.png").write_bytes(b"")
    (scans / "notes.txt").write_text("not a scan")  # not an image name: ignored, not reported
    (scans / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    missing = tmp_path / "no such scan.jpg"
    output = tmp_path / "out.json"
    code, out, err = predict(capsys, str(scans), str(missing), "--model", str(model_file), "--output", str(output))
    assert code == 0, err
    assert f"skipped {scans / 'broken.jpg'}: " in out
    assert f"skipped {scans / 'empty.png'}: empty file (0 bytes)" in out
    assert f"skipped {missing}: no such file or folder" in out
    assert "notes.txt" not in out and ".DS_Store" not in out
    assert [row["file"] for row in json.loads(output.read_text())] == [str(p) for p in sorted(scans.rglob("scan*"))]


def test_no_readable_image_is_an_error(capsys, model_file, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, err = predict(capsys, str(tmp_path / "broken.png"), "--model", str(model_file))
    assert code == 2
    assert err.startswith("error: no readable image")
    assert "skipped" in out


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_output_carries_every_class_probability(capsys, model_file, scans, tmp_path, suffix):
    output = tmp_path / f"predictions.{suffix}"
    code, out, err = predict(capsys, str(scans), "--model", str(model_file), "--output", str(output))
    assert code == 0, err
    assert out.splitlines()[-1] == f"wrote {output}"
    table = pd.read_csv(output) if suffix == "csv" else pd.DataFrame(json.loads(output.read_text()))
    assert list(table.columns) == ["file", "frame", "label", "probability", *CLASSES]
    assert list(table["frame"]) == [0] * len(table)  # one picture per file
    files = sorted(scans.rglob("*.jpg"))
    assert list(table["file"]) == [str(p) for p in files]

    predictor = Predictor(model_file)  # the same numbers as the library (and so the served model) computes
    expected = predictor.probabilities([predictor.load_image(p) for p in files])
    tolerance = 1e-6 if suffix == "json" else 5e-7 + 1e-9  # the CSV keeps 6 decimals
    np.testing.assert_allclose(table[CLASSES].to_numpy(), expected, rtol=0, atol=tolerance)
    np.testing.assert_allclose(table[CLASSES].sum(axis=1), 1, atol=1e-5)
    assert list(table["label"]) == [CLASSES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(table["probability"], expected.max(axis=1), atol=tolerance)


def test_gradcam_writes_one_png_per_scan(capsys, model_file, scans, tmp_path):
    folder = tmp_path / "cams"
    code, _, err = predict(capsys, str(scans), "--model", str(model_file), "--gradcam", str(folder))
    assert code == 0, err
    written = sorted(p.name for p in folder.iterdir())
    # the two class folders hold files with the same names: each scan still gets its own overlay
    assert written == [
        "glioma__scan 0.gradcam.png",
        "glioma__scan 1.gradcam.png",
        "no tumor__scan 0.gradcam.png",
        "no tumor__scan 1.gradcam.png",
    ]
    for name in written:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.size == (32, 32)  # model.image_size of the tiny params


def test_gradcam_names_are_the_file_stems_when_they_differ(capsys, model_file, scans, tmp_path):
    folder = tmp_path / "cams"
    code, _, err = predict(capsys, str(scans / "glioma"), "--model", str(model_file), "--gradcam", str(folder))
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["scan 0.gradcam.png", "scan 1.gradcam.png"]


def test_bad_output_suffix_fails_before_any_work(capsys, model_file, scans, tmp_path):
    code, out, err = predict(capsys, str(scans), "--model", str(model_file), "--output", str(tmp_path / "x.txt"))
    assert code == 2
    assert err.splitlines() == [f"error: --output {tmp_path / 'x.txt'}: use a .csv or .json file name"]
    assert out == ""
    assert not (tmp_path / "x.txt").exists()


def test_missing_model_exits_2_with_one_error_line(scans, tmp_path):
    """The real command: exit status 2, one `error:` line, no traceback."""
    result = run(
        [str(BIN / "braintumor"), "predict", str(scans), "--model", str(tmp_path / "nope.pt")],
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: model file {tmp_path / 'nope.pt'} not found. Train one first: `dvc repro train`."
    ]


def test_unknown_model_uri_exits_2(capsys, scans, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    code, _, err = predict(capsys, str(scans), "--model", "models:/no-such-model/1")
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # (MLflow logs INFO lines too)
    assert len(errors) == 1 and errors[0].startswith("error: cannot fetch models:/no-such-model/1 from sqlite:///")
    assert "Traceback" not in err


def test_gradcam_names_stay_distinct_when_a_file_name_holds_the_separator(capsys, model_file, sample_root, tmp_path):
    # a__b.jpg beside a/b.jpg, and x.jpg beside X.JPG in another folder (one file on macOS and Windows)
    scan = (sample_root / "Testing" / "glioma_tumor" / "te_0000.jpg").read_bytes()
    scans = tmp_path / "scans"
    for rel in ("a__b.jpg", "a/b.jpg", "c/x.jpg", "c/X.JPG", "d/x.jpg"):
        (scans / rel).parent.mkdir(parents=True, exist_ok=True)
        (scans / rel).write_bytes(scan)
    folder = tmp_path / "cams"
    code, _, err = predict(capsys, str(scans), "--model", str(model_file), "--gradcam", str(folder))
    assert code == 0, err
    written = sorted(p.name for p in folder.iterdir())
    assert len(written) == 5
    assert len({name.casefold() for name in written}) == 5


def test_output_paths_that_cannot_be_written_are_one_line_errors(capsys, model_file, scans, tmp_path):
    """Issue 28 row 11: a missing --output folder and a --gradcam that is a file fail before any work; a path the
    system refuses at write time (/proc) is one line naming it, never a traceback."""
    existing = tmp_path / "overlay.png"
    existing.write_bytes(b"keep me")
    code, out, err = predict(capsys, str(scans), "--model", str(model_file), "--gradcam", str(existing))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"error: --gradcam {existing} is a file; give a folder for the overlays"]
    assert existing.read_bytes() == b"keep me"
    missing = tmp_path / "no such folder" / "p.csv"
    code, out, err = predict(capsys, str(scans), "--model", str(model_file), "--output", str(missing))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: --output {missing}: its folder {missing.parent} does not exist; create it or write elsewhere"
    ]
    code, out, err = predict(capsys, str(scans), "--model", str(model_file), "--output", "/proc/x.csv")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: cannot write /proc/x.csv")
    assert err.splitlines()[-1].endswith("give --output / --gradcam a path in a writable folder")
