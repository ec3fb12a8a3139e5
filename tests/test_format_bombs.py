"""Medical-format bombs (issue 28, rows 1-5 and 13): small DICOM and NIfTI files whose headers lie about what they
expand to. Each is refused by name before it is decoded, in `braintumor predict`, the served model's predict and
validate, in bounded memory; and the same formats, told the truth, are still read.

Every file is written here (tests/scan_files.py). The memory figures come from one subprocess that reads them all:
its peak RSS (VmHWM) is reset before each file (/proc/self/clear_refs), so each file's figure is its own.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import REPO
from pydicom.uid import JPEGBaseline8Bit, RLELossless
from scan_files import (
    deflated_dicom_bytes,
    dicom_bytes,
    encapsulated_dicom_bytes,
    jpeg_bytes,
    nifti_bytes,
    nifti_gz_of_zeros,
    rle_bomb_frame,
)

from braintumor.cli import main
from braintumor.data.validate import inspect_file
from braintumor.model.predictor import Predictor
from braintumor.scans.limits import ImageLimits, ImageProblem
from braintumor.scans.read import read_pictures
from braintumor.serving.requests import RequestError, answer_request

LIMITS = ImageLimits()  # params.yaml's defaults: data.max_frames=1000, data.max_image_pixels=40,000,000
MEMORY_BOUND_MB = 100  # what reading and refusing one bomb may add to the process's peak (they took 0.4-3 GB)


def texture(size: int = 64) -> np.ndarray:
    return (np.arange(size * size).reshape(size, size) * 7 % 251).astype(np.uint8)


# Each row of the table: (file name, what the refusal says).
BOMBS = {
    "frames.dcm": (
        lambda: dicom_bytes(np.zeros((5000, 4, 4), np.uint8)),
        "5,000 frames of 4x4 in one file, over the limit data.max_frames=1,000; refused before decoding",
    ),
    "deflate.dcm": (
        lambda: deflated_dicom_bytes(np.zeros((64, 64), np.uint8), trailing_zeros=256 << 20),
        "a Deflated DICOM file that inflates past 2,101,248 bytes, more than its header promises (64x64, "
        "1 frames: 4,096 pixel bytes)",
    ),
    "rle.dcm": (
        lambda: encapsulated_dicom_bytes([rle_bomb_frame(64 << 20)], RLELossless, rows=64, columns=64),
        "frame 0: RLE segment 0 is 1,048,576 bytes (from offset 64), but a 64x64 plane takes at most 4,161: "
        "it would expand past the frame (an RLE bomb?)",
    ),
    "jpeg.dcm": (
        lambda: encapsulated_dicom_bytes(
            [jpeg_bytes(texture(), claimed_size=(12000, 12000))], JPEGBaseline8Bit, rows=64, columns=64
        ),
        "frame 0: the embedded image is 12000x12000, but the DICOM header says 64x64 (Columns x Rows): a "
        "corrupt or crafted file, refused before decoding",
    ),
    "float64.nii.gz": (
        lambda: nifti_gz_of_zeros((500, 500, 100), "float64"),
        "500x500x100 voxels of 8 bytes (float64) = 200,000,000 bytes once decoded, over 4 bytes x "
        "data.max_image_pixels = 160,000,000; refused before decoding",
    ),
}

MEASURE = r"""
import base64, contextlib, io, json, sys
import pandas as pd
from braintumor.predict import predict_paths
from braintumor.model.predictor import Predictor
from braintumor.serving.requests import answer_request

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024  # MB

model, paths = sys.argv[1], sys.argv[2:]
predictor = Predictor(model)
with contextlib.redirect_stdout(io.StringIO()):
    predict_paths([paths[-1]], model)  # warm up (imports, allocator pools) on the good file: not measured
results = {}
for path in paths:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak RSS starts again from the current RSS
    before = status("VmRSS:")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            predict_paths([path], model)
        except Exception as exc:
            print(f"{type(exc).__name__}: {exc}")
    try:
        frame = pd.DataFrame({"image": [base64.b64encode(open(path, "rb").read()).decode("ascii")]})
        served = f"answered {len(answer_request(predictor, frame))} rows"
    except Exception as exc:
        served = str(exc)
    results[path] = {"predict": out.getvalue(), "served": served, "peak_mb": status("VmHWM:") - before}
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    files = {}
    for name, (make, _) in BOMBS.items():
        files[name] = folder / name
        files[name].write_bytes(make())
    files["good.dcm"] = folder / "good.dcm"
    files["good.dcm"].write_bytes(dicom_bytes(np.stack([texture()] * 3)))
    return files


@pytest.fixture(scope="module")
def measured(bomb_files, model_file) -> dict[str, dict]:
    """For each file: what `braintumor predict` printed, what the served model answered, and the peak RSS (MB)
    above the process's RSS before it, from one subprocess."""
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(model_file), *map(str, bomb_files.values())],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {Path(path).name: result for path, result in json.loads(done.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("name", list(BOMBS))
def test_a_medical_bomb_is_refused_by_name_before_decoding_in_bounded_memory(name, measured, bomb_files):
    refusal = BOMBS[name][1]
    result = measured[name]
    assert result["predict"].startswith(f"skipped {bomb_files[name]}: {refusal}"), result["predict"]
    assert result["served"].startswith(f"1 of 1 rows cannot be used: row 0: {refusal}"), result["served"]
    assert "Traceback" not in result["predict"] + result["served"]
    assert result["peak_mb"] < MEMORY_BOUND_MB, result
    assert inspect_file(str(bomb_files[name]), LIMITS)["problem"].startswith(refusal)  # validate excludes it


def test_the_memory_measure_sees_a_real_decode(measured):
    """The 3-frame 64x64 DICOM is predicted (one row per frame), so the measure runs the whole path."""
    assert measured["good.dcm"]["served"] == "answered 3 rows"
    assert "[frame 2]" in measured["good.dcm"]["predict"]


# ---- the same formats, told the truth, are read --------------------------------------------------------------


def test_a_deflated_dicom_is_read_as_its_uncompressed_twin():
    pixels = texture()
    deflated = read_pictures(deflated_dicom_bytes(pixels), limits=LIMITS)
    assert np.array_equal(
        np.asarray(deflated.images[0]), np.asarray(read_pictures(dicom_bytes(pixels), limits=LIMITS).images[0])
    )


def test_rle_and_jpeg_dicoms_whose_frames_match_their_header_are_read():
    from pydicom import dcmread

    ds = dcmread(__import__("io").BytesIO(dicom_bytes(np.stack([texture(), texture()[::-1]]))))
    ds.compress(RLELossless)  # pydicom's own RLE encoder
    buffer = __import__("io").BytesIO()
    ds.save_as(buffer)
    rle = read_pictures(buffer.getvalue(), limits=LIMITS)
    assert [np.asarray(image).tolist() for image in rle.images] == [texture().tolist(), texture()[::-1].tolist()]
    jpeg = read_pictures(
        encapsulated_dicom_bytes([jpeg_bytes(texture())], JPEGBaseline8Bit, rows=64, columns=64), limits=LIMITS
    )
    assert np.abs(np.asarray(jpeg.images[0], dtype=int) - texture()).mean() < 8  # lossy, but the same picture


def test_the_frame_limit_is_data_max_frames_and_counts_nifti_slices_too():
    volume = np.random.default_rng(0).uniform(0, 1, (16, 16, 12)).astype(np.float32)
    assert len(read_pictures(nifti_bytes(volume), limits=ImageLimits(max_frames=12)).images) == 12
    with pytest.raises(ImageProblem, match=r"^12 slices of 16x16 in one file, over the limit data.max_frames=11"):
        read_pictures(nifti_bytes(volume), limits=ImageLimits(max_frames=11))


def test_predict_middle_decodes_only_the_frames_it_keeps(model_file, tmp_path, capsys, monkeypatch):
    """A 9-frame JPEG DICOM with `--middle 1`: pydicom decodes frame 4 alone, never the whole pixel data."""
    import pydicom
    import pydicom.pixels

    decoded = []
    decode_one = pydicom.pixels.pixel_array

    def spy(ds, *, index=None, **kwargs):
        decoded.append(index)
        return decode_one(ds, index=index, **kwargs)

    def whole(ds):
        raise AssertionError("the whole pixel data was decoded")

    path = tmp_path / "series.dcm"
    path.write_bytes(
        encapsulated_dicom_bytes(
            [jpeg_bytes(np.roll(texture(), i, axis=0)) for i in range(9)], JPEGBaseline8Bit, rows=64, columns=64
        )
    )
    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(whole))
    main(["predict", str(path), "--model", str(model_file), "--middle", "1", "--output", str(tmp_path / "p.csv")])
    assert f"{path} [frame 4]" in capsys.readouterr().out
    assert list(pd.read_csv(tmp_path / "p.csv")["frame"]) == [4]
    assert decoded == [4]


def test_a_requests_pictures_are_bounded_by_data_max_frames_across_its_rows(model_file, monkeypatch):
    predictor = Predictor(model_file)
    monkeypatch.setattr(predictor, "limits", ImageLimits(max_frames=5))
    three = base64.b64encode(dicom_bytes(np.stack([texture()] * 3))).decode("ascii")
    assert len(answer_request(predictor, pd.DataFrame({"image": [three]}))) == 3
    with pytest.raises(RequestError) as caught:
        answer_request(predictor, pd.DataFrame({"image": [three, three, three]}))
    assert caught.value.rows == [
        (
            1,
            "3 frames after the 3 pictures of the request's earlier rows: over data.max_frames=5 pictures in one "
            "request; refused before decoding. Send fewer rows (or frames) per request",
        ),
        (
            2,
            "3 frames after the 3 pictures of the request's earlier rows: over data.max_frames=5 pictures in one "
            "request; refused before decoding. Send fewer rows (or frames) per request",
        ),
    ]
