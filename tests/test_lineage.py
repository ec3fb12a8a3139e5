"""What a tracked run leaves in MLflow, read back through MlflowClient: the datasets it used (with their contexts and
DVC digests), the test metrics on its LoggedModel, the registered version's description, tags and model card,
system metrics, a run name that says what the run is, and the experiment's type for the UI.

One real pipeline run for the module (validate, train, evaluate on the tiny sample, in a git repository whose
dataset is `dvc add`-ed), logging to a temporary SQLite store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from helpers import BIN, run, tiny_params_dict
from mlflow.tracking import MlflowClient

from braintumor.config import load_params
from braintumor.evaluation import model_card
from braintumor.model.transforms import Preprocessing
from braintumor.tracking.provenance import dvc_data_hashes

REGISTERED = "brain-tumor-classifier"


def _git(root: Path, *args: str) -> str:
    return run(["git", *args], cwd=root).stdout.strip()


@pytest.fixture(scope="module")
def tracked(sample_root, module_dir):
    """The project folder after validate, train and evaluate; the MLflow client of its store; its run info."""
    import shutil

    from braintumor import pipeline

    root = module_dir
    shutil.copytree(sample_root, root / "data")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict("data")))
    run(["git", "init", "-q"], cwd=root)
    for key, value in (("user.email", "test@example.invalid"), ("user.name", "test"), ("commit.gpgsign", "false")):
        run(["git", "config", key, value], cwd=root)
    run(["dvc", "init", "-q"], cwd=root)
    run(["dvc", "add", "-q", "data/Training", "data/Testing"], cwd=root)  # the DVC hashes the datasets carry
    run(["git", "add", "-A"], cwd=root)
    run(["git", "commit", "-q", "-m", "tiny project"], cwd=root)

    uri = f"sqlite:///{root / 'mlflow.db'}"
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.5",
    }  # a tiny run is shorter than MLflow's default 10 s
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("DVC_EXP_NAME", raising=False)
        for key, value in env.items():
            patch.setenv(key, value)
        params = load_params("params.yaml")
        pipeline.validate(params)
        pipeline.train(params)
        pipeline.evaluate(params)
        info = json.loads(Path(params.paths.run_info).read_text())
    mlflow.set_tracking_uri(uri)
    yield {
        "root": root,
        "params": params,
        "info": info,
        "client": MlflowClient(uri, uri),
        "uri": uri,
        "commit": _git(root, "rev-parse", "HEAD"),
        "evaluation": json.loads((root / params.paths.eval_metrics).read_text()),
        "manifest": pd.read_csv(root / params.paths.manifest),
    }


@pytest.mark.slow
def test_the_run_lists_train_val_and_test_rows_as_datasets_with_dvc_digests(tracked):
    client, info, manifest = tracked["client"], tracked["info"], tracked["manifest"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tracked["root"])
        hashes = dvc_data_hashes("data")
    dvc_files = {
        split: yaml.safe_load((tracked["root"] / f"data/{split}.dvc").read_text())["outs"][0]["md5"]
        for split in ("Training", "Testing")
    }
    assert hashes == dvc_files and all(h.endswith(".dir") for h in hashes.values())

    inputs = client.get_run(info["run_id"]).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(by_context) == {"training", "validation", "testing"}
    for context, split, folder in (
        ("training", "train", "Training"),
        ("validation", "val", "Training"),
        ("testing", "test", "Testing"),
    ):
        dataset = by_context[context]
        assert dataset.digest == dvc_files[folder], context
        assert dataset.name.startswith(f"{split}-")
        assert json.loads(dataset.profile)["num_rows"] == int((manifest["split"] == split).sum())
        assert {"path", "label", "sha256", "exact_in_train"} <= {
            c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]
        }
        assert json.loads(dataset.source)["uri"] == str(tracked["root"] / "data" / folder)


@pytest.mark.slow
def test_test_metrics_are_on_the_logged_model_with_their_dataset(tracked):
    client, info, evaluation = tracked["client"], tracked["info"], tracked["evaluation"]
    model = client.get_logged_model(info["model_id"])
    assert model.source_run_id == info["run_id"]
    metrics = {m.key: m for m in model.metrics}
    assert metrics["test_macro_f1"].value == pytest.approx(evaluation["macro_f1"])
    assert metrics["test_accuracy"].value == pytest.approx(evaluation["accuracy"])
    assert metrics["test_leak_free_n"].value == evaluation["leak_free"]["n"]
    datasets = {i.dataset.name.split("-")[0]: i.dataset for i in client.get_run(info["run_id"]).inputs.dataset_inputs}
    test_metrics = [m for m in model.metrics if m.key.startswith("test_")]
    assert {(m.dataset_name, m.dataset_digest) for m in test_metrics} == {
        (datasets["test"].name, datasets["test"].digest)
    }
    # log_model copied the training summary onto the model (MLflow does that for the run's step-0 metrics)
    assert metrics["best_val_macro_f1"].value == pytest.approx(
        json.loads((tracked["root"] / tracked["params"].paths.train_metrics).read_text())["best_val_macro_f1"]
    )
    assert model.params["train.epochs"] == "1" and model.tags["git_commit"] == tracked["commit"]
    version = client.get_model_version(REGISTERED, info["model_version"])
    assert version.source == f"models:/{info['model_id']}"  # the registered version is this LoggedModel


@pytest.mark.slow
def test_registered_version_has_description_tags_and_model_card(tracked, tmp_path):
    client, info, evaluation = tracked["client"], tracked["info"], tracked["evaluation"]
    version = client.get_model_version(REGISTERED, info["model_version"])
    assert "Research use, not a diagnostic device" in version.description
    assert f"| all Testing | {evaluation['accuracy']:.3f} | {evaluation['macro_f1']:.3f} |" in version.description
    tags = version.tags
    assert tags["git_commit"] == tracked["commit"]
    assert tags["data_dvc_hash"] == client.get_run(info["run_id"]).data.tags["data_dvc_hash"]
    assert tags["data_dvc_hash"].startswith("Testing:")
    assert tags["test_macro_f1"] == f"{evaluation['macro_f1']:.3f}"
    assert tags["test_leak_free_n"] == str(evaluation["leak_free"]["n"])
    assert tags["disclaimer"] == "research use, not a diagnostic device"
    assert "glioma_tumor" in tags["intended_use"] and "Not for diagnosis" in tags["intended_use"]
    assert tags["preprocessing"] == model_card.preprocessing_text(
        {"preprocessing": Preprocessing.from_config(tracked["params"].model, tracked["params"].preprocess).to_dict()}
    )
    assert "centre crop 32x32" in tags["preprocessing"]
    assert tags["promotion_metric"].startswith(("leak_free_macro_f1=", "macro_f1="))
    assert tags["champion_score_on_same_scans"] == "no other champion"

    card = (tracked["root"] / tracked["params"].paths.model_card).read_text()
    with_model = mlflow.artifacts.download_artifacts(
        f"models:/{REGISTERED}/{info['model_version']}", dst_path=str(tmp_path / "model")
    )
    assert (Path(with_model) / "model_card.md").read_text() == card
    assert (Path(with_model) / "MLmodel").is_file()  # the card sits beside the served model, which still loads
    with_run = client.download_artifacts(info["run_id"], "report/model_card.md", str(tmp_path / "run"))
    assert Path(with_run).read_text() == card
    assert card.startswith(f"# Model card: {REGISTERED} version {info['model_version']}")
    for section in (
        "## Data",
        "## Splits",
        "## Leakage found",
        "## Metrics",
        "leak-free Testing",
        "## Calibration",
        "## Known failure modes",
    ):
        assert section in card
    assert f"temperature-scaled with T = {evaluation['temperature']:.3f}" in card  # fitted on val by training
    assert "## External data" not in card  # evaluate.external_data is not set


@pytest.mark.slow
def test_training_records_system_metrics(tracked):
    metrics = tracked["client"].get_run(tracked["info"]["run_id"]).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert metrics["system/system_memory_usage_megabytes"] > 0
    history = tracked["client"].get_metric_history(tracked["info"]["run_id"], "system/cpu_utilization_percentage")
    assert len(history) >= 1


@pytest.mark.slow
def test_run_is_named_after_its_params_and_commit_and_the_experiment_is_a_training_one(tracked):
    client, info = tracked["client"], tracked["info"]
    run_ = client.get_run(info["run_id"])
    assert run_.info.run_name == f"params.yaml @ {tracked['commit'][:7]}"
    experiment = client.get_experiment(run_.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert info["experiment_id"] == run_.info.experiment_id
    assert info["ui_url"] == f"http://127.0.0.1:5000/#/experiments/{run_.info.experiment_id}/runs/{info['run_id']}"


@pytest.mark.slow
def test_runs_url_prints_the_runs_table_of_the_experiment(tracked):
    root = tracked["root"]
    printed = run([str(BIN / "braintumor"), "runs-url"], cwd=root, env={"MLFLOW_TRACKING_URI": tracked["uri"]})
    experiment_id = tracked["info"]["experiment_id"]
    assert printed.stdout.strip() == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    )
    (root / "other.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "never-ran"}}))
    missing = run(
        [str(BIN / "braintumor"), "runs-url", "--params", "other.yaml"],
        cwd=root,
        env={"MLFLOW_TRACKING_URI": tracked["uri"]},
        check=False,
    )
    assert missing.returncode == 2 and "no experiment 'never-ran'" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.slow
def test_promotion_metric_param_decides_on_the_leak_free_figure(tracked):
    """The tiny run's own promotion compared the leak-free macro-F1 (the default param); the run says so."""
    tags = tracked["client"].get_run(tracked["info"]["run_id"]).data.tags
    assert tags["promotion"] == "champion"  # the first version
    leak_free_n = tracked["evaluation"]["leak_free"]["n"]
    assert tags["promotion_metric"] == ("leak_free_macro_f1" if leak_free_n else "macro_f1")


def test_served_model_declares_type_hints_instead_of_the_private_switch():
    """MLflow checks `predict`'s type hints when the model class is defined (at import); pandas DataFrames are the
    public way to say "the signature is the contract" and raise no "Add type hints" warning."""
    from braintumor.serving import mlflow_model

    assert not hasattr(mlflow_model.BrainTumorClassifier, "_skip_type_hint_validation")
    hints = mlflow_model.BrainTumorClassifier().predict_type_hints
    assert hints.input is pd.DataFrame and hints.output is pd.DataFrame
    imported = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import braintumor.serving.mlflow_model"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert imported.returncode == 0, imported.stderr
    assert "type hint" not in imported.stderr.lower(), imported.stderr
