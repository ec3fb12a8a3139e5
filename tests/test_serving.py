"""The served model end to end: train and register a tiny model, `mlflow models serve` it, send real requests.

One server for the module (training, registering and starting it take about a minute on 2 CPU cores).
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import BIN, REPO, run, tiny_params_dict
from PIL import Image
from scan_files import compressed_dicom_bytes, dicom_bytes, eps, float_tiff, nifti_bytes

from braintumor.processes import served_model

pytestmark = pytest.mark.slow

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
MODEL_URI = "models:/brain-tumor-classifier/1"
MAX_PIXELS = 200_000  # data.max_image_pixels of the served model: a 600x600 image is over it
MAX_FILE_BYTES = 5_000_000  # data.max_file_bytes of the served model


@dataclass
class Served:
    root: Path  # the project folder: params.yaml, models/model.pt, mlflow.db
    url: str
    env: dict  # MLFLOW_TRACKING_URI of the temporary store
    pid: int  # `mlflow models serve`, whose child processes answer the requests

    def post(self, payload: dict | bytes) -> tuple[int, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = urllib.request.Request(
            f"{self.url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def served(sample_root, module_dir):
    root = module_dir
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    # Relative paths (models/model.pt, manifests/, .cache, mlartifacts/) land in `root`, the stages' working folder.
    params = tiny_params_dict(sample_root, data={"max_image_pixels": MAX_PIXELS, "max_file_bytes": MAX_FILE_BYTES})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run([str(BIN / "braintumor"), "validate", "--params", "params.yaml"], cwd=root, env=env)
    trained = run([sys.executable, str(REPO / "stages" / "train.py"), "--params", "params.yaml"], cwd=root, env=env)
    assert "registered brain-tumor-classifier version 1" in trained.stdout

    with served_model(MODEL_URI, root / "server.log", env=env, cwd=root) as server:
        yield Served(root, server.url, env, server.pid)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _request(*images: bytes | str | object, column: str = "image") -> dict:
    rows = [[_b64(image) if isinstance(image, bytes) else image] for image in images]
    return {"dataframe_split": {"columns": [column], "data": rows}}


@pytest.fixture(scope="module")
def scans(served, sample_root) -> dict[str, Path]:
    """One scan in each format the server must take: JPEG, 8-bit PNG, 16-bit grayscale PNG, RGBA PNG."""
    folder = served.root / "scans"
    folder.mkdir()
    testing = sample_root / "Testing"
    jpeg = folder / "scan.jpg"
    jpeg.write_bytes((testing / "glioma_tumor" / "te_0000.jpg").read_bytes())
    with Image.open(testing / "meningioma_tumor" / "te_0001.jpg") as image:
        gray = np.asarray(image.convert("L"))
    (folder / "scan.png").write_bytes(_png(Image.fromarray(gray)))
    with Image.open(testing / "pituitary_tumor" / "te_0002.jpg") as image:
        wide = np.asarray(image.convert("L")).astype(np.uint16) * 64 + 1000  # a 16-bit scan's range
    (folder / "scan16.png").write_bytes(_png(Image.fromarray(wide)))
    with Image.open(folder / "scan16.png") as image:
        assert image.mode.startswith("I;16")
    with Image.open(testing / "no_tumor" / "te_0000.jpg") as image:
        rgba = image.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    (folder / "scan_rgba.png").write_bytes(_png(rgba))
    return {"jpeg": jpeg, "png": folder / "scan.png", "png16": folder / "scan16.png", "rgba": folder / "scan_rgba.png"}


@pytest.fixture(scope="module")
def batch_predictions(served, scans) -> list[dict]:
    status, body = served.post(_request(*(path.read_bytes() for path in scans.values())))
    assert status == 200, body
    return body["predictions"]


def test_a_batch_of_formats_gets_one_row_per_image(batch_predictions, scans):
    assert len(batch_predictions) == len(scans) == 4
    for i, row in enumerate(batch_predictions):
        assert list(row) == ["row", "frame", "label", "probability", *CLASSES, "novelty", "unlike_training"]
        assert (row["row"], row["frame"]) == (i, 0)
        assert row["novelty"] >= 0 and row["unlike_training"] == (row["novelty"] > 1)
        probs = np.array([row[c] for c in CLASSES])
        assert probs.sum() == pytest.approx(1, abs=1e-6)
        assert np.all((probs >= 0) & (probs <= 1))
        assert row["label"] == CLASSES[int(probs.argmax())]
        assert row["probability"] == row[row["label"]]


@pytest.mark.parametrize("model", ["models/model.pt", MODEL_URI], ids=["model-file", "registered-model"])
def test_served_numbers_equal_braintumor_predict(served, scans, batch_predictions, model):
    output = served.root / f"predict-{model.replace('/', '_').replace(':', '')}.json"
    run(
        [
            str(BIN / "braintumor"),
            "predict",
            *(str(p) for p in scans.values()),
            "--model",
            model,
            "--output",
            str(output),
        ],
        cwd=served.root,
        env=served.env,
        timeout=300,
    )
    local = json.loads(output.read_text())
    assert [row["file"] for row in local] == [str(p) for p in scans.values()]
    for mine, theirs in zip(local, batch_predictions):
        assert mine["label"] == theirs["label"] and mine["unlike_training"] == theirs["unlike_training"]
        for key in ["probability", *CLASSES, "novelty"]:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (mine["file"], key)


def test_line_wrapped_base64_is_accepted(served, scans, batch_predictions):
    wrapped = base64.encodebytes(scans["jpeg"].read_bytes()).decode("ascii")  # 76-character lines, like `base64`
    assert "\n" in wrapped.strip()
    status, body = served.post(_request(wrapped))
    assert status == 200, body
    for key in CLASSES:
        assert body["predictions"][0][key] == pytest.approx(batch_predictions[0][key], abs=1e-6)


BAD_ROWS = {
    "not-base64": (lambda good: [good, "this is not base64!"], 1, "not valid base64"),
    "not-an-image": (lambda good: [_b64(b"%PDF-1.4 a document, not a scan")], 0, "not an image"),
    "empty-string": (lambda good: [good, good, ""], 2, "empty value"),
    "null": (lambda good: [None, good], 0, "empty value"),
    "a-number": (lambda good: [good, 42], 1, "a value of type int, not a string"),
    "too-many-pixels": (
        lambda good: [_b64(_png(Image.new("L", (600, 600), 40)))],
        0,
        f"600x600 = 360,000 pixels is over the limit data.max_image_pixels={MAX_PIXELS:,}",
    ),
    "undecodable-dicom": (
        lambda good: [good, _b64(compressed_dicom_bytes())],
        1,
        "DICOM compressed as JPEG Lossless, Non-Hierarchical, First-Order Prediction",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_gets_400_naming_the_row_and_the_reason(served, scans, case):
    rows, bad_row, reason = BAD_ROWS[case]
    images = rows(_b64(scans["jpeg"].read_bytes()))
    status, body = served.post(_request(*images))
    assert status == 400, body
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"
    assert f"row {bad_row}: {reason}" in body["message"]
    # the same, without MLflow's prefix, and as data
    assert body["detail"].startswith(f"1 of {len(images)} rows cannot be used: row {bad_row}: {reason}")
    assert len(body["rows"]) == 1
    assert body["rows"][0]["row"] == bad_row and body["rows"][0]["reason"].startswith(reason)


def test_every_bad_row_is_named(served, scans):
    good = _b64(scans["jpeg"].read_bytes())
    status, body = served.post(_request("", good, "not base64 !", good))
    assert status == 400, body
    assert [row["row"] for row in body["rows"]] == [0, 2]
    assert body["detail"].startswith("2 of 4 rows cannot be used: row 0: empty value")
    assert "; row 2: not valid base64" in body["detail"]


def test_a_wrong_column_gets_400_naming_the_column(served, scans):
    status, body = served.post(_request(scans["jpeg"].read_bytes(), column="img"))
    assert status == 400, body
    # MLflow checks the columns against the model's signature before the model sees the request
    assert "missing inputs ['image']" in body["message"]
    assert "'img'" in body["message"]


def test_not_json_gets_400(served):
    status, body = served.post(b"{not json")
    assert status == 400, body


def test_a_good_request_succeeds_after_bad_ones(served, scans, batch_predictions):
    for bad in (_request("not base64 !"), _request(scans["jpeg"].read_bytes(), column="img"), b"{not json"):
        assert served.post(bad)[0] == 400
    status, body = served.post(_request(scans["jpeg"].read_bytes()))
    assert status == 200, body
    assert body["predictions"][0]["label"] == batch_predictions[0]["label"]
    for key in CLASSES:
        assert body["predictions"][0][key] == pytest.approx(batch_predictions[0][key], abs=1e-6)


# --- hostile requests ----------------------------------------------------------------------------------------------

RSS_GROWTH_BOUND_MB = 250  # what the server's processes may grow by, over all the hostile requests (144 MB seen)


def _tree_rss_mb(pid: int) -> float:
    """VmRSS of a process and all its descendants, in MB (from /proc)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def _hostile_payloads(good: str) -> dict[str, tuple[dict, str]]:
    """name -> (request, how the answer's detail must start)."""
    nan_scan = np.full((64, 64), 500.0)
    nan_scan[5, 5] = np.nan
    fifty_mb = base64.b64encode(os.urandom(37_500_000)).decode("ascii")  # 50,000,000 characters of base64
    bombs = {250, 500, 999}
    thin = _b64(_png(Image.new("L", (1, 40_000), 90)))
    return {
        "thin bomb": (
            _request(good, thin),
            "1 of 2 rows cannot be used: row 1: 1x40000 is 40,000.0 times longer "
            "than wide, over the limit data.max_aspect_ratio=5",
        ),
        "NaN TIFF": (
            _request(_b64(float_tiff(nan_scan))),
            "1 of 1 rows cannot be used: row 0: 1 of 4,096 pixels are not finite numbers (NaN or infinity)",
        ),
        "EPS": (_request(good, _b64(eps())), "1 of 2 rows cannot be used: row 1: not an image in an accepted format"),
        "50 MB base64": (
            _request(fifty_mb),
            f"1 of 1 rows cannot be used: row 0: 37,500,000 bytes is over the limit "
            f"data.max_file_bytes={MAX_FILE_BYTES:,}",
        ),
        "1,000 rows": (
            _request(*(thin if i in bombs else good for i in range(1000))),
            "3 of 1000 rows cannot be used: row 250: 1x40000 is",
        ),
    }


def test_hostile_requests_get_400_naming_the_row_in_bounded_memory_and_the_server_goes_on(
    served, scans, batch_predictions
):
    good = _b64(scans["jpeg"].read_bytes())
    assert served.post(_request(good))[0] == 200
    baseline = _tree_rss_mb(served.pid)
    assert baseline > 100  # the tree was found: a ResNet50 and MLflow are loaded
    peak = baseline
    for name, (payload, detail) in _hostile_payloads(good).items():
        status, body = served.post(payload)
        assert status == 400, (name, body)
        assert body["detail"].startswith(detail), (name, body["detail"][:300])
        assert [row["row"] for row in body["rows"]] == (
            [250, 500, 999] if name == "1,000 rows" else [int(detail.split("row ")[1].split(":")[0])]
        )
        assert "Traceback" not in body["message"] and str(served.root) not in body["message"], name
        peak = max(peak, _tree_rss_mb(served.pid))
        assert peak - baseline < RSS_GROWTH_BOUND_MB, (name, baseline, peak)
    print(f"server RSS: {baseline:.0f} MB before the hostile requests, at most {peak:.0f} MB after one")
    status, body = served.post(_request(good))
    assert status == 200, body
    for key in CLASSES:
        assert body["predictions"][0][key] == pytest.approx(batch_predictions[0][key], abs=1e-6)


def test_dicom_frames_and_nifti_slices_get_a_row_each_with_the_cli_numbers(served, scans):
    """A JPEG, a 2-frame DICOM of scans and a 3-slice NIfTI volume in one request: a row per picture, `row` and
    `frame` saying which, and the numbers `braintumor predict` gives for the same files."""
    folder = served.root / "medical"
    folder.mkdir(exist_ok=True)
    with Image.open(scans["jpeg"]) as image:
        first = np.asarray(image.convert("L"))
    with Image.open(scans["png"]) as image:
        second = np.asarray(image.convert("L"))
    files = {
        "series.dcm": dicom_bytes(np.stack([first, second]), NumberOfFrames=2),
        "brain.nii.gz": nifti_bytes(np.stack([second.T, first.T, second.T], axis=2).astype(np.int16), gz=True),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    status, body = served.post(_request(scans["jpeg"].read_bytes(), *files.values()))
    assert status == 200, body
    served_rows = body["predictions"]
    assert [(r["row"], r["frame"]) for r in served_rows] == [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]
    # the DICOM's first frame holds the JPEG's pixels: the same prediction
    for key in CLASSES:
        assert served_rows[1][key] == pytest.approx(served_rows[0][key], abs=1e-6)

    output = served.root / "predict-medical.json"
    paths = [scans["jpeg"], folder / "series.dcm", folder / "brain.nii.gz"]
    run(
        [
            str(BIN / "braintumor"),
            "predict",
            *(str(p) for p in paths),
            "--model",
            "models/model.pt",
            "--output",
            str(output),
        ],
        cwd=served.root,
        env=served.env,
        timeout=300,
    )
    local = [r for r in json.loads(output.read_text()) if r["frame"] is not None]  # not the volume summary
    assert [(r["file"], r["frame"]) for r in local] == [(str(paths[r["row"]]), r["frame"]) for r in served_rows]
    for mine, theirs in zip(local, served_rows):
        for key in ["probability", *CLASSES, "novelty"]:
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), (mine["file"], mine["frame"], key)
