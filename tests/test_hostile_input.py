"""Hostile files: each is built here, then sent through every path that reads a user's file or request row.

validate, the training cache, `braintumor predict` and the served model's predict all turn a bad file into that
file's (or row's) problem with a reason, and go on with the others.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_params
from PIL import EpsImagePlugin, Image
from scan_files import eps, float_tiff

from braintumor.cli import main
from braintumor.data import cache
from braintumor.data.cache import _decode_row
from braintumor.data.validate import inspect_file, validate_dataset
from braintumor.model.predictor import Predictor
from braintumor.scans.limits import ImageLimits, ImageProblem
from braintumor.scans.preprocess import ScanPrep
from braintumor.scans.read import decode_grayscale, open_checked
from braintumor.serving.requests import RequestError, answer_request

LIMITS = ImageLimits()  # the defaults of params.yaml
SCAN = ScanPrep(size=40)  # how the training cache prepares a scan (no head crop: the path is under test)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def thin_png() -> bytes:
    """1 x 40,000 pixels in about 200 bytes: under the pixel limit, 256 x 10,240,000 once the short side is 256."""
    return png(Image.new("L", (1, 40_000), 90))


@pytest.fixture(scope="module")
def predictor(model_file) -> Predictor:
    return Predictor(model_file)


def request(*files: bytes) -> pd.DataFrame:
    return pd.DataFrame({"image": [base64.b64encode(f).decode("ascii") for f in files]})


def good_scan(sample_root: Path) -> bytes:
    return (sample_root / "Testing" / "glioma_tumor" / "te_0000.jpg").read_bytes()


# --- 1. thin images -----------------------------------------------------------------------------------------------


def test_a_thin_image_is_refused_at_its_header_by_the_aspect_ratio_limit():
    data = thin_png()
    assert len(data) < 1000
    with pytest.raises(
        ImageProblem,
        match=r"1x40000 is 40,000.0 times longer than wide, over the limit "
        r"data.max_aspect_ratio=5",
    ):
        open_checked(data, limits=LIMITS)
    # a wide scan within the limit is read
    assert open_checked(png(Image.new("L", (300, 100))), limits=LIMITS).size == (300, 100)
    with pytest.raises(ImageProblem, match="over the limit data.max_aspect_ratio=2"):
        open_checked(png(Image.new("L", (300, 100))), limits=ImageLimits(max_aspect_ratio=2))


def test_a_thin_image_is_a_row_problem_in_the_served_model(predictor, sample_root):
    with pytest.raises(RequestError) as caught:
        answer_request(predictor, request(good_scan(sample_root), thin_png()))
    assert caught.value.rows == [(1, caught.value.rows[0][1])]
    assert "data.max_aspect_ratio" in caught.value.rows[0][1]
    assert str(caught.value).startswith("1 of 2 rows cannot be used: row 1: 1x40000 is")


def test_a_thin_image_is_skipped_by_predict_and_the_good_scans_are_predicted(capsys, model_file, sample_root, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(good_scan(sample_root))
    (folder / "thin.png").write_bytes(thin_png())
    (folder / "z.jpg").write_bytes(good_scan(sample_root))
    main(["predict", str(folder), "--model", str(model_file), "--output", str(tmp_path / "p.csv")])
    out = capsys.readouterr().out
    assert f"skipped {folder / 'thin.png'}: 1x40000 is 40,000.0 times longer than wide" in out
    assert list(pd.read_csv(tmp_path / "p.csv")["file"]) == [str(folder / "a.jpg"), str(folder / "z.jpg")]


def test_a_thin_image_is_excluded_by_validate_and_never_reaches_the_cache(dataset_copy):
    (dataset_copy / "Training" / "glioma_tumor" / "thin.png").write_bytes(thin_png())
    result = validate_dataset(dataset_copy, tiny_params(dataset_copy).data, workers=1, progress=False)
    excluded = {p["path"]: p["reason"] for p in result.report["excluded"]}
    assert "data.max_aspect_ratio" in excluded["Training/glioma_tumor/thin.png"]
    assert "Training/glioma_tumor/thin.png" not in set(result.manifest["path"])
    image, problem = _decode_row(str(dataset_copy / "Training" / "glioma_tumor" / "thin.png"), SCAN, LIMITS)
    assert image is None and "data.max_aspect_ratio" in problem


# --- 1. any exception while preparing one file is that file's problem ----------------------------------------------


@pytest.fixture
def poisoned(monkeypatch):
    """Preparing an image of 61 x 59 pixels raises MemoryError (as a resize of a huge image would), anywhere."""
    real = cache.prepare_image

    def prepare_image(image, scan):
        if image.info.get("source_size") == (61, 59):
            raise MemoryError("Unable to allocate 2.44 GiB for an array with shape (256, 10240000)")
        return real(image, scan)

    monkeypatch.setattr(cache, "prepare_image", prepare_image)
    return png(Image.new("L", (61, 59), 100))


def test_any_exception_on_one_row_becomes_that_rows_problem_without_a_trace(predictor, sample_root, poisoned):
    with pytest.raises(RequestError) as caught:
        answer_request(predictor, request(good_scan(sample_root), poisoned, good_scan(sample_root)))
    assert caught.value.rows == [(1, "not enough memory to decode this image")]
    assert "Traceback" not in str(caught.value) and "/" not in str(caught.value)
    # the other rows alone are answered
    assert len(answer_request(predictor, request(good_scan(sample_root), good_scan(sample_root)))) == 2


def test_any_exception_on_one_file_is_that_files_problem_in_predict(
    capsys, model_file, sample_root, tmp_path, poisoned
):
    (tmp_path / "a.jpg").write_bytes(good_scan(sample_root))
    (tmp_path / "b.png").write_bytes(poisoned)
    main(["predict", str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "--model", str(model_file)])
    out = capsys.readouterr().out
    assert f"skipped {tmp_path / 'b.png'}: not enough memory to decode this image" in out
    assert str(tmp_path / "a.jpg") in out.splitlines()[-1]


def test_any_exception_on_one_file_is_that_files_problem_in_the_cache_and_validate(tmp_path, poisoned, monkeypatch):
    path = tmp_path / "b.png"
    path.write_bytes(poisoned)
    assert _decode_row(str(path), SCAN, LIMITS) == (None, "not enough memory to decode this image")

    from braintumor.data import validate

    def fingerprint(gray):
        raise ZeroDivisionError("a bug deep in a decoder, at /srv/secret/path.py")

    monkeypatch.setattr(validate, "fingerprint", fingerprint)
    assert inspect_file(str(path), LIMITS) == {"problem": "cannot be decoded as a scan (ZeroDivisionError)"}


# --- 2. non-finite pixels -----------------------------------------------------------------------------------------


def test_a_float_scan_with_nan_or_infinite_pixels_is_refused_not_blacked_out(predictor, sample_root):
    with Image.open(sample_root / "Testing" / "glioma_tumor" / "te_0000.jpg") as image:
        scan = np.asarray(image.convert("L"), dtype=np.float32) / 255 * 900 + 100  # a float MRI's range
    broken = scan.copy()
    broken[10, 10], broken[20, 20] = np.nan, np.inf
    with pytest.raises(ImageProblem, match=r"2 of 4,096 pixels are not finite numbers \(NaN or infinity\)"):
        decode_grayscale(float_tiff(broken), limits=LIMITS)
    with pytest.raises(RequestError, match=r"row 0: 2 of 4,096 pixels are not finite"):
        answer_request(predictor, request(float_tiff(broken)))
    # the same scan without them is read, and stretched over its own range
    pixels = np.asarray(decode_grayscale(float_tiff(scan), limits=LIMITS))
    assert pixels.min() == 0 and pixels.max() == 255


def test_a_float_scan_spanning_the_whole_float32_range_is_stretched_without_overflow():
    extremes = np.zeros((8, 8), np.float32)
    extremes[0, 0], extremes[0, 1] = -3.4e38, 3.4e38  # in float32, max - min overflows to inf
    pixels = np.asarray(decode_grayscale(float_tiff(extremes), limits=LIMITS))
    assert pixels[0, 0] == 0 and pixels[0, 1] == 255 and pixels[4, 4] == 128


# --- 3. formats ---------------------------------------------------------------------------------------------------


def test_an_eps_file_is_refused_without_running_its_interpreter(monkeypatch, tmp_path, predictor):
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    data = eps()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "EPS"  # Pillow, left to itself, takes it as an image
    with pytest.raises(
        ImageProblem, match=r"not an image in an accepted format \(JPEG, PNG, BMP, TIFF, WEBP, GIF, DICOM, NIfTI\)"
    ):
        open_checked(data, limits=LIMITS)
    path = tmp_path / "scan.jpg"  # an image's name does not make it one
    path.write_bytes(data)
    assert inspect_file(str(path), LIMITS)["problem"].startswith("not an image in an accepted format")
    with pytest.raises(RequestError, match="row 0: not an image in an accepted format"):
        answer_request(predictor, request(data))
    assert calls == []


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF"])
def test_every_accepted_format_is_read(kind):
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 77).save(buffer, format=kind)
    assert decode_grayscale(buffer.getvalue(), limits=LIMITS).size == (32, 32)


@pytest.mark.parametrize("kind", ["PPM", "ICO", "PCX", "TGA"])
def test_other_formats_pillow_knows_are_refused(kind):
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 77).save(buffer, format=kind)
    with pytest.raises(ImageProblem, match="not an image in an accepted format"):
        open_checked(buffer.getvalue(), limits=LIMITS)


# --- 4. file size -------------------------------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as fh:  # 1 TiB, sparse: no disk used, and reading it whole cannot work
        fh.write(png(Image.new("L", (8, 8))))
        fh.truncate(2**40)
    problem = inspect_file(str(path), LIMITS)["problem"]
    assert problem == (
        "1,099,511,627,776 bytes is over the limit data.max_file_bytes=250,000,000; raise the limit if the scan is real"
    )
    with pytest.raises(ImageProblem, match="is over the limit data.max_file_bytes"):
        decode_grayscale(path, limits=LIMITS)
    small = ImageLimits(max_file_bytes=100)
    with pytest.raises(ImageProblem, match="^101 bytes is over the limit data.max_file_bytes=100;"):
        open_checked(b"x" * 101, limits=small)


def test_a_request_row_over_the_size_limit_is_refused_before_it_is_decoded(predictor, sample_root, monkeypatch):
    limit = len(good_scan(sample_root)) - 1
    monkeypatch.setattr(predictor, "limits", ImageLimits(max_file_bytes=limit))
    with pytest.raises(
        RequestError,
        match=rf"row 0: {len(good_scan(sample_root)):,} bytes is over the limit "
        rf"data.max_file_bytes={limit:,}",
    ):
        answer_request(predictor, request(good_scan(sample_root)))
