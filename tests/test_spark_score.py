"""Scoring an archive on Spark (deploy/spark_score.py): the registered model as MLflow's Spark UDF, one Parquet row
per file, with the numbers of `braintumor predict`.

The Spark test logs the novelty model of conftest through the train stage's own path into a temporary MLflow
store, runs `spark-submit --master local[2] deploy/spark_score.py` on a folder of every kind of file (JPEG, PNG,
16-bit PNG, DICOM, multi-frame DICOM, NIfTI volume, broken files) and compares the Parquet with `predict`'s table.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import shutil
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import BIN, REPO, run, tiny_params
from mlflow.models import infer_signature
from PIL import Image
from scan_files import compressed_dicom_bytes, dicom_bytes, nifti_bytes

from braintumor.errors import BrainTumorError
from braintumor.model.predictor import Predictor
from braintumor.predict import predict_paths
from braintumor.scans.limits import problem_of
from braintumor.serving.file_answers import answer_files, rows_of
from braintumor.serving.requests import RequestError, answer_request

sys.path.insert(0, str(REPO / "deploy"))
import spark_score  # noqa: E402  (deploy/ is not a package: the same file is what spark-submit runs)

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
ANSWER = ["probability", *CLASSES, "novelty"]
TRUNCATED_JPEG, NOT_A_SCAN, LOSSLESS_DICOM = "broken.jpg", "notes.txt", "lossless.dcm"


def _gray(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_archive(folder, sample_root) -> None:
    """Every sample scan as a JPEG, PNGs (8- and 16-bit), a DICOM, a 3-frame DICOM and a 3-slice NIfTI volume
    (each with one blank picture, which shows no head) and three files that cannot be used."""
    folder.mkdir()
    jpegs = sorted(sample_root.rglob("*.jpg"))
    for path in jpegs:
        shutil.copy(path, folder / f"{path.parent.parent.name}-{path.parent.name}-{path.name}")
    first, second = _gray(jpegs[0]), _gray(jpegs[-1])
    blank = np.zeros_like(first)
    (folder / "scan.png").write_bytes(_png(first))
    (folder / "scan16.png").write_bytes(_png(second.astype(np.uint16) * 64 + 1000))
    (folder / "one.dcm").write_bytes(dicom_bytes(second))
    (folder / "series.dcm").write_bytes(dicom_bytes(np.stack([first, blank, second]), NumberOfFrames=3))
    volume = np.stack([second.T, first.T, blank.T], axis=2).astype(np.int16)  # axial slices, inferior first
    (folder / "brain.nii.gz").write_bytes(nifti_bytes(volume, gz=True))
    (folder / TRUNCATED_JPEG).write_bytes(jpegs[1].read_bytes()[:300])
    (folder / NOT_A_SCAN).write_text("not a scan\n")
    (folder / LOSSLESS_DICOM).write_bytes(compressed_dicom_bytes())


# --- the model's per-file answer, in this process -----------------------------------------------------------------


def test_the_rows_param_defaults_to_the_rest_answer_and_names_its_values():
    assert rows_of(None) == rows_of({}) == "picture"
    assert rows_of({"rows": "file"}) == "file"
    with pytest.raises(RequestError, match="params rows='slice': use 'picture' or 'file'"):
        rows_of({"rows": "slice"})


def test_one_answer_per_file_holds_each_pictures_answer_and_a_bad_files_reason(
    novelty_model_file, sample_root, tmp_path
):
    predictor = Predictor(novelty_model_file[0])
    write_archive(tmp_path / "scans", sample_root)
    names = ["one.dcm", "series.dcm", TRUNCATED_JPEG, "brain.nii.gz"]
    files = [(tmp_path / "scans" / name).read_bytes() for name in names]
    request = pd.DataFrame({"image": [base64.b64encode(data).decode("ascii") for data in files]})
    answers = answer_files(predictor, request)
    assert len(answers) == 4

    good = [0, 1, 3]
    pictures = answer_request(predictor, request.iloc[good].reset_index(drop=True))  # the REST answer: per picture
    for row, (i, answer) in enumerate((i, answers.iloc[i]) for i in good):
        rest = pictures[pictures["row"] == row].reset_index(drop=True)
        assert [f["frame"] for f in answer["frames"]] == rest["frame"].tolist()
        for mine, theirs in zip(answer["frames"], rest.to_dict("records")):
            assert mine["label"] == theirs["label"] and mine["unlike_training"] == theirs["unlike_training"]
            assert [mine[key] for key in ANSWER] == pytest.approx([theirs[key] for key in ANSWER], abs=1e-6)
        assert answer["scan"]["error"] is None
    one, series, broken, volume = (answers.iloc[i] for i in range(4))
    assert one["answer"] == {
        **{k: v for k, v in one["frames"][0].items() if k not in ("frame", "shows_head")},
        "averaged_over": 1,
    }
    assert [f["shows_head"] for f in series["frames"]] == [True, False, True]  # the blank frame shows no head
    assert series["answer"]["averaged_over"] == 2
    mean = np.mean([[f[c] for c in CLASSES] for f in series["frames"] if f["shows_head"]], axis=0)
    assert [series["answer"][c] for c in CLASSES] == pytest.approx(mean, abs=1e-12)
    assert series["answer"]["label"] == CLASSES[int(mean.argmax())]
    assert volume["scan"] == {
        "kind": "nifti",
        "pictures": 3,
        "description": volume["scan"]["description"],
        "error": None,
    }
    assert broken["scan"]["error"] == problem_of(_error_of(predictor, files[2]))
    assert broken["frames"] == [] and set(broken["answer"].values()) == {None}


def _error_of(predictor: Predictor, data: bytes) -> Exception:
    try:
        predictor.pictures(data)
    except Exception as exc:  # what the file's reason is made from
        return exc
    raise AssertionError("the file was readable")


def test_a_model_logged_without_the_rows_param_is_refused_before_spark_starts(monkeypatch):
    example = pd.DataFrame({"image": ["aGVsbG8="]})
    output = pd.DataFrame(
        {"row": [0], "frame": [0], "label": ["no_tumor"], "probability": [0.9], **{c: [0.25] for c in CLASSES}}
    )
    monkeypatch.setattr("braintumor.tracking.runs.model_signature", lambda uri: infer_signature(example, output))
    with pytest.raises(
        BrainTumorError, match="logged by an older version of this project: its signature has no param 'rows'"
    ):
        spark_score.result_type("models:/brain-tumor-classifier/1")


def test_the_udf_type_follows_the_models_classes(monkeypatch):
    example = pd.DataFrame({"image": ["aGVsbG8="]})
    output = pd.DataFrame({"row": [0], "frame": [0], "label": ["a"], "probability": [0.9], "a": [0.9], "b c": [0.1]})
    monkeypatch.setattr(
        "braintumor.tracking.runs.model_signature",
        lambda uri: infer_signature(example, output, params={"rows": "picture"}),
    )
    udf_type, fields = spark_score.result_type("models:/x/1")
    assert fields == ["label", "probability", "a", "b c"]  # no novelty score in this model
    assert (
        "answer: struct<`label`: string, `probability`: double, `a`: double, `b c`: double, averaged_over: long>"
        in udf_type
    )


# --- Spark ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered(novelty_model_file, sample_root, module_dir):
    """The novelty model, logged and registered as the train stage does it; (model URI, MLflow environment)."""
    from braintumor.pipeline import log_served_model
    from braintumor.tracking.runs import RunTracker

    model_path = module_dir / "model.pt"
    shutil.copy(novelty_model_file[0], model_path)
    params = tiny_params(sample_root, paths={"model": str(model_path)})
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{module_dir / 'mlflow.db'}"}
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(module_dir)
        patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        tracker = RunTracker(params)
        try:
            version = log_served_model(
                tracker, params, Predictor(model_path).load_image(next((sample_root / "Training").rglob("*.jpg")))
            )
        finally:
            tracker.end()
    mlflow.set_tracking_uri(previous)
    return f"models:/{params.tracking.registered_model}/{version}", env, model_path


@pytest.fixture(scope="module")
def scored(registered, sample_root, module_dir) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(the Parquet of spark-submit --master local[2], predict's table, predict's reason per skipped file)."""
    uri, env, model_path = registered
    archive = module_dir / "archive"
    write_archive(archive, sample_root)
    result = run(
        [
            str(BIN / "spark-submit"),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.sql.shuffle.partitions=2",
            str(REPO / "deploy" / "spark_score.py"),
            str(archive),
            "answers.parquet",
            "--model",
            uri,
            "--batch-size",
            "16",
        ],
        cwd=module_dir,
        env=env,
        timeout=300,
    )
    assert f"wrote answers.parquet: {len(list(archive.iterdir()))} files" in result.stdout, result.stdout
    parquet = pd.read_parquet(module_dir / "answers.parquet")
    parquet["file"] = parquet["path"].str.removeprefix("file:")

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # predict prints its table and a line per file it skips
        table = predict_paths(sorted(str(p) for p in archive.iterdir()), str(model_path))
    skipped = dict(
        line.removeprefix("skipped ").split(": ", 1)
        for line in printed.getvalue().splitlines()
        if line.startswith("skipped ")
    )
    return parquet, table, skipped


@pytest.mark.slow
def test_the_parquet_has_one_row_per_file_with_its_sha256(scored, module_dir):
    parquet, _, _ = scored
    archive = module_dir / "archive"
    assert sorted(parquet["file"]) == sorted(str(p) for p in archive.iterdir())
    for file, sha256, size in zip(parquet["file"], parquet["sha256"], parquet["size_bytes"]):
        data = open(file, "rb").read()
        assert (sha256, size) == (hashlib.sha256(data).hexdigest(), len(data))
    kinds = parquet.set_index(parquet["file"].str.rpartition("/")[2])["kind"]
    assert (kinds["one.dcm"], kinds["series.dcm"], kinds["brain.nii.gz"], kinds["scan16.png"]) == (
        "dicom",
        "dicom",
        "nifti",
        "image",
    )


@pytest.mark.slow
def test_the_parquet_answers_equal_braintumor_predict(scored):
    parquet, table, _ = scored
    pictures = table[table["frame"].notna()]
    summaries = table[table["frame"].isna()].set_index("file")
    usable = parquet[parquet["error"].isna()]
    assert len(usable) == len(parquet) - 3 and set(pictures["file"]) == set(usable["file"])
    for row in usable.itertuples():
        theirs = pictures[pictures["file"] == row.file]
        frames = list(row.frames)
        assert [f["frame"] for f in frames] == theirs["frame"].tolist(), row.file
        for mine, other in zip(frames, theirs.to_dict("records")):
            assert (mine["label"], mine["unlike_training"]) == (other["label"], other["unlike_training"]), row.file
            assert [mine[k] for k in ANSWER] == pytest.approx([other[k] for k in ANSWER], abs=1e-6), row.file
        answer = [getattr(row, k) for k in ANSWER]
        if row.file.endswith(".nii.gz"):  # predict's volume summary row
            summary = summaries.loc[row.file]
            assert row.label == summary["label"] and row.averaged_over == 2
            assert answer == pytest.approx([summary[k] for k in ANSWER], abs=1e-6)
        elif len(frames) > 1:  # the multi-frame DICOM: the same summary, over the frames that show a head
            assert [f["shows_head"] for f in frames] == [True, False, True] and row.averaged_over == 2
            head = theirs[[f["shows_head"] for f in frames]]
            assert answer == pytest.approx(head[ANSWER].mean().tolist(), abs=1e-6)
            assert row.label == head[CLASSES].mean().idxmax()
        else:
            assert row.averaged_over == 1 and row.label == frames[0]["label"]
            assert answer == pytest.approx([frames[0][k] for k in ANSWER], abs=1e-12)
        assert row.unlike_training == (row.novelty > 1)


@pytest.mark.slow
def test_a_file_that_cannot_be_used_has_predicts_reason_and_nothing_else_fails(scored):
    parquet, _, skipped = scored
    failed = parquet[parquet["error"].notna()].set_index("file")
    assert sorted(name.rpartition("/")[2] for name in failed.index) == sorted(
        [TRUNCATED_JPEG, NOT_A_SCAN, LOSSLESS_DICOM]
    )
    assert failed["error"].to_dict() == skipped
    assert failed["error"].str.len().min() > 10
    assert failed[["label", "probability", "kind", "pictures"]].isna().all().all()
    assert all(len(frames) == 0 for frames in failed["frames"])


def test_spark_score_refuses_an_existing_output_folder(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    assert spark_score.main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "OUTPUT" in capsys.readouterr().err
