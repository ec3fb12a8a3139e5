"""The evaluate stage refuses a model that does not fit the data, with a message that says what to do."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_params
from PIL import Image

from braintumor.data.sample import write_sample_dataset
from braintumor.data.splits import write_manifest
from braintumor.data.validate import validate_dataset
from braintumor.errors import BrainTumorError
from braintumor.fileio import write_json
from braintumor.model.network import build_model, save_model
from braintumor.model.predictor import Predictor
from braintumor.model.transforms import Preprocessing
from braintumor.pipeline import evaluate


def _setup(sample_root, tmp_path, model_classes):
    params = tiny_params(sample_root)
    paths = dataclasses.replace(
        params.paths,
        manifest=str(tmp_path / "splits.csv"),
        model=str(tmp_path / "m.pt"),
        run_info=str(tmp_path / "run.json"),
        cache=str(tmp_path / "cache"),
        eval_metrics=str(tmp_path / "eval.json"),
        eval_plots=str(tmp_path / "plots"),
        validation_report=str(tmp_path / "validation.json"),
        model_card=str(tmp_path / "model_card.md"),
    )
    params = dataclasses.replace(params, paths=paths)
    validated = validate_dataset(sample_root, params.data, workers=1, progress=False)
    write_manifest(validated.manifest, paths.manifest)
    write_json(paths.validation_report, validated.report)
    save_model(
        paths.model,
        build_model("none", len(model_classes)),
        classes=model_classes,
        preprocessing=Preprocessing.from_config(params.model, params.preprocess),
        params=params.to_dict(),
        metrics={},
    )
    return params


def test_evaluate_refuses_a_model_trained_on_other_classes(sample_root, tmp_path):
    params = _setup(sample_root, tmp_path, ["glioma_tumor", "no_tumor"])
    with pytest.raises(BrainTumorError, match=r"trained on classes .*`dvc repro train`"):
        evaluate(params)
    assert not (tmp_path / "eval.json").exists()


def test_evaluate_without_a_model_or_manifest_says_which_stage_to_run(sample_root, tmp_path):
    params = _setup(sample_root, tmp_path, list(tiny_params(sample_root).data.classes))
    (tmp_path / "m.pt").unlink()
    with pytest.raises(BrainTumorError, match="dvc repro train"):
        evaluate(params)
    (tmp_path / "splits.csv").unlink()
    with pytest.raises(BrainTumorError, match="dvc repro validate"):
        evaluate(params)


def _tracked_run(tmp_path, monkeypatch) -> str:
    """An MLflow run in a store under tmp_path, named in run.json as the train stage leaves it; its id."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        pass
    (tmp_path / "run.json").write_text(
        json.dumps({"run_id": run.info.run_id, "registered_model": "x", "model_version": None})
    )
    return run.info.run_id


def _external_set(sample_root, tmp_path) -> Path:
    """Another source's labelled scans (another seed), in Kaggle's folder names, plus what real sets hold: one
    byte-identical copy of a Training scan, one re-encoded brighter copy of another, and one broken file."""
    other = tmp_path / "other"
    write_sample_dataset(other, per_class=2, test_per_class=3, size=64, seed=99)
    external = tmp_path / "external"
    for folder in (other / "Testing").iterdir():
        shutil.copytree(folder, external / {"no_tumor": "notumor"}.get(folder.name, folder.name))
    training = sorted((sample_root / "Training" / "glioma_tumor").iterdir())
    shutil.copy(training[0], external / "glioma_tumor" / "exact_copy.png")
    pixels = np.asarray(Image.open(training[1]).convert("L"), dtype=np.float32)
    Image.fromarray(np.clip(pixels * 1.1 + 5, 0, 255).astype(np.uint8)).save(
        external / "glioma_tumor" / "near.jpg", quality=90
    )
    (external / "meningioma_tumor" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    big = sorted((external / "pituitary_tumor").iterdir())[0]  # one scan at a size no Training scan has
    Image.open(big).resize((80, 80)).save(big, quality=92)
    return external


def test_evaluate_scores_an_external_set_and_its_copy_free_part(
    sample_root, novelty_model_file, tmp_path, monkeypatch, capsys
):
    from mlflow.tracking import MlflowClient

    params = _setup(sample_root, tmp_path, list(tiny_params(sample_root).data.classes))
    shutil.copy(novelty_model_file[0], params.paths.model)  # with the novelty score: every set gets its figures
    external = _external_set(sample_root, tmp_path)
    params = dataclasses.replace(
        params,
        data=dataclasses.replace(params.data, aliases={"notumor": "no_tumor"}),
        evaluate=dataclasses.replace(params.evaluate, external_data=str(external)),
    )
    run_id = _tracked_run(tmp_path, monkeypatch)
    metrics = evaluate(params).to_dict()  # as eval.json holds it

    ext = metrics["external"]
    assert ext["n"] == 4 * 3 + 2 and ext["n_excluded"] == 1  # the broken file is left out, and counted
    assert ext["exact_in_train"] == 1 and ext["near_in_train"] == 1
    assert ext["copy_free"]["n"] == 12
    for key in ("accuracy", "macro_f1", "ece", "ece_uncalibrated", "temperature"):
        assert key in ext and key in (ext["copy_free"] if key != "temperature" else ext)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["external"]["copy_free"]["n"] == 12
    table = pd.read_csv(tmp_path / "plots" / "external_predictions.csv")
    assert len(table) == 14 and table["copy_free"].sum() == 12
    assert set(table.loc[~table["copy_free"], "path"]) == {"glioma_tumor/exact_copy.png", "glioma_tumor/near.jpg"}
    logged = MlflowClient().get_run(run_id).data.metrics
    assert logged["external_n"] == 14 and logged["external_copy_free_n"] == 12
    assert logged["external_accuracy"] == pytest.approx(ext["accuracy"])
    # every external scan is 64 x 64 like the sample's Training scans of its class, but one pituitary at 80 x 80
    assert (ext["by_image_size"]["seen"]["n"], ext["by_image_size"]["unseen"]["n"]) == (13, 1)
    unseen = table.loc[~table["size_seen_in_training"]]
    assert list(unseen["label"]) == ["pituitary_tumor"] and (unseen["width"] == 80).all()
    assert logged["external_size_seen_n"] == 13 and logged["external_size_unseen_n"] == 1
    assert ext["by_image_size"]["unseen"]["per_class"]["pituitary_tumor"]["support"] == 1
    assert (
        "1 of the external scans have an image size no Training scan of their class has (another source, "
        "likely): accuracy"
    ) in capsys.readouterr().out
    assert "test_ece_uncalibrated" in logged and "test_temperature" in logged
    card = (tmp_path / "model_card.md").read_text()  # the model card renders the external figures too
    assert "## External data" in card and f"path: {external}; 1 exact copies of Training scans" in card
    assert f"| accuracy | {ext['accuracy']:.3f} | {ext['copy_free']['accuracy']:.3f} |" in card

    # The unlike_training flag's figures, for every set, agree with the per-scan novelty in the predictions table
    predictions = pd.read_csv(tmp_path / "plots" / "predictions.csv")
    assert list(predictions["unlike_training"]) == list(predictions["novelty"] > 1)
    # one table builder: the Testing and the external tables answer in the same columns
    answer = ["predicted", "probability", *(f"p_{c}" for c in params.data.classes)]
    flags = ["leak_free", "size_seen_in_training"]
    assert list(predictions.columns) == ["path", "actual", *answer, *flags, "novelty", "unlike_training"]
    assert list(table.columns[-len(answer) - 4 :]) == [
        *answer,
        "copy_free",
        "size_seen_in_training",
        "novelty",
        "unlike_training",
    ]
    for rows in (predictions, table):
        p = rows[answer[2:]].to_numpy()
        np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
        assert (rows["predicted"] == [params.data.classes[i] for i in p.argmax(axis=1)]).all()
    predictor = Predictor(params.paths.model)
    _, novelty = predictor.predict([predictor.load_image(sample_root / p) for p in predictions["path"]])
    np.testing.assert_allclose(predictions["novelty"], novelty, rtol=1e-5)
    for figures, rows in (
        (metrics["unlike_training"], predictions),
        (metrics["leak_free"]["unlike_training"], predictions[predictions["leak_free"]]),
    ):
        flagged = rows[rows["unlike_training"]]
        assert figures["n_flagged"] == len(flagged) and figures["quantile"] == 0.5
        if len(flagged):
            assert figures["accuracy_flagged"] == pytest.approx((flagged["actual"] == flagged["predicted"]).mean())
    assert table["unlike_training"].sum() == ext["unlike_training"]["n_flagged"]
    assert ext["copy_free"]["unlike_training"]["n_flagged"] == table.loc[table["copy_free"], "unlike_training"].sum()
    assert logged["test_unlike_training_n_flagged"] == metrics["unlike_training"]["n_flagged"]
    assert logged["external_unlike_training_n_flagged"] == ext["unlike_training"]["n_flagged"]
    assert "## Scans unlike the Training scans" in card
    assert f"| all Testing | {metrics['n']} | {metrics['unlike_training']['n_flagged']} |" in card


def test_evaluate_names_a_missing_external_folder(sample_root, tmp_path):
    params = _setup(sample_root, tmp_path, list(tiny_params(sample_root).data.classes))
    params = dataclasses.replace(
        params, evaluate=dataclasses.replace(params.evaluate, external_data=str(tmp_path / "nowhere"))
    )
    with pytest.raises(BrainTumorError, match=r"evaluate\.external_data = .*nowhere.*no such folder"):
        evaluate(params)


def test_evaluate_reports_testing_by_whether_its_image_size_is_seen_in_training(sample_root, tmp_path, monkeypatch):
    """Testing's gliomas re-saved at 80 x 80 (another source): `unseen`, in eval.json, predictions.csv and MLflow."""
    from mlflow.tracking import MlflowClient

    data = tmp_path / "data"
    shutil.copytree(sample_root, data)
    gliomas = sorted((data / "Testing/glioma_tumor").iterdir())
    for path in gliomas:
        Image.open(path).resize((80, 80)).save(path, quality=92)
    params = _setup(data, tmp_path, list(tiny_params(data).data.classes))
    run_id = _tracked_run(tmp_path, monkeypatch)
    metrics = evaluate(params).to_dict()  # as eval.json holds it

    predictions = pd.read_csv(tmp_path / "plots" / "predictions.csv")
    unseen_paths = set(predictions.loc[~predictions["size_seen_in_training"], "path"])
    assert unseen_paths == {p.relative_to(data).as_posix() for p in gliomas}
    groups = metrics["by_image_size"]
    assert (groups["seen"]["n"], groups["unseen"]["n"]) == (9, 3)
    assert groups["unseen"]["per_class"]["glioma_tumor"]["support"] == 3
    assert groups["seen"]["per_class"]["glioma_tumor"]["support"] == 0
    for name, group in (
        ("seen", predictions[predictions["size_seen_in_training"]]),
        ("unseen", predictions[~predictions["size_seen_in_training"]]),
    ):
        assert groups[name]["accuracy"] == pytest.approx((group["actual"] == group["predicted"]).mean())
    assert json.loads((tmp_path / "eval.json").read_text())["by_image_size"]["unseen"]["n"] == 3
    logged = MlflowClient().get_run(run_id).data.metrics
    assert logged["test_size_unseen_n"] == 3 and logged["test_size_seen_n"] == 9
    assert logged["test_size_unseen_accuracy"] == pytest.approx(groups["unseen"]["accuracy"])
    # macro-F1 over the classes a side holds (the unseen side: gliomas only); no copy of the temperature
    assert groups["unseen"]["macro_f1"] == pytest.approx(groups["unseen"]["per_class"]["glioma_tumor"]["f1"])
    assert "test_size_unseen_macro_f1" in logged and "test_size_seen_temperature" not in logged
    # the sample has no Testing copy of a Training scan: the leak-free split is the same
    leak_free = metrics["leak_free"]["by_image_size"]
    assert (leak_free["seen"]["n"], leak_free["unseen"]["n"]) == (9, 3)
    assert logged["test_leak_free_size_unseen_n"] == 3


def test_evaluate_resolves_the_device_as_training_does_mps_included(sample_root, tmp_path, monkeypatch):
    """One device resolver for every stage: `auto` on a Mac with MPS evaluates on MPS, as it trained there."""
    import torch

    from braintumor import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.select_device("auto") == torch.device("mps")
    asked = []

    def select_device(preference, *args):
        asked.append(preference)
        raise RuntimeError("stop here")

    monkeypatch.setattr(runtime, "select_device", select_device)
    params = _setup(sample_root, tmp_path, list(tiny_params(sample_root).data.classes))
    for device in ("auto", "mps", "cpu"):
        with pytest.raises(RuntimeError, match="stop here"):
            evaluate(dataclasses.replace(params, train=dataclasses.replace(params.train, device=device)))
    assert asked == ["auto", "mps", "cpu"]
