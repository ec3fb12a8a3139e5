"""MLflow, and the only module that imports it (besides the served model's own code file, mlflow_model.py).

One MLflow run per pipeline run: training opens it and writes its id to `paths.run_info`; evaluation and the
report log into the same run. The tracking URI is `MLFLOW_TRACKING_URI` when set (a team's server), else the
SQLite file `mlflow.db` at the repository root, resolved to an absolute path so `dvc exp run --temp`, which runs
in a copy under `.dvc/tmp/exps/`, logs to the same store (a relative `sqlite:///x.db` is resolved the same way).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from braintumor.config import Params
from braintumor.errors import BrainTumorError
from braintumor.fileio import project_root, read_json, write_json
from braintumor.training import EpochStats

log = logging.getLogger(__name__)
SERVED_MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root() / 'mlflow.db'}"
    relative_sqlite = uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri
    if relative_sqlite:  # e.g. sqlite:///mlflow.db: from the repository root, not a `dvc exp run --temp` copy
        return f"sqlite:///{project_root() / uri[len('sqlite:///'):]}"
    return uri


def _use_store(experiment: str) -> str:
    """Point mlflow at the store and return the experiment id (created with artifacts beside the SQLite file)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        location = (project_root() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        return mlflow.create_experiment(experiment, artifact_location=location)
    except MlflowException as exc:
        raise BrainTumorError(f"cannot reach the MLflow tracking store {uri}: {exc}. Check MLFLOW_TRACKING_URI, "
                              "or unset it to use the local mlflow.db.") from None


class RunTracker:
    """Implements training's EpochLogger; everything a training run sends to MLflow."""

    def __init__(self, params: Params, resume_run_id: str | None = None) -> None:
        self.params = params
        experiment_id = _use_store(params.tracking.experiment)
        run_name = os.environ.get("DVC_EXP_NAME") or None
        self.run = mlflow.start_run(run_id=resume_run_id, experiment_id=None if resume_run_id else experiment_id,
                                    run_name=None if resume_run_id else run_name)
        self.run_id = self.run.info.run_id
        if not resume_run_id:
            mlflow.log_params({k: _param_value(v) for k, v in params.flat().items()})
            mlflow.set_tags(run_tags(params))

    def log_epoch(self, stats: EpochStats) -> None:
        values = {k: float(v) for k, v in vars(stats).items() if k not in ("epoch", "seconds")}
        mlflow.log_metrics(values, step=stats.epoch)

    def finish_training(self, summary: dict[str, Any], device: str, precision: str) -> None:
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.set_tags({"device": device, "precision": precision})
        for path in (self.params.paths.train_metrics, self.params.paths.validation_report):
            mlflow.log_artifact(path, artifact_path="metrics")
        mlflow.log_artifacts(self.params.paths.train_plots, artifact_path="plots/train")

    def log_served_model(self, model_path: str, example: pd.DataFrame, example_output: pd.DataFrame) -> str:
        """Log the pyfunc model (models from code) and register it; returns the new version number."""
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVED_MODEL_CODE),
            artifacts={"model": str(Path(model_path).resolve())},
            code_paths=[str(Path(__file__).parent)],
            signature=infer_signature(example, example_output),
            input_example=example,
            pip_requirements=_served_requirements(),
            registered_model_name=self.params.tracking.registered_model,
        )
        return str(info.registered_model_version)

    def end(self, status: str = "FINISHED") -> None:
        mlflow.end_run(status=status)


def run_tags(params: Params) -> dict[str, str]:
    return {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "data_dvc_hash": dvc_data_hash(params.paths.data),
        "torch_version": torch.__version__,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
    }


def dvc_data_hash(data_dir: str) -> str:
    """DVC's hash of the dataset: from `data/*.dvc` files if the data is `dvc add`-ed, else from dvc.lock."""
    hashes = {}
    for split in ("Training", "Testing"):
        dvc_file = Path(data_dir) / f"{split}.dvc"
        if dvc_file.is_file():
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [{}])
            hashes[split] = outs[0].get("md5", "")
    if not hashes and Path("dvc.lock").is_file():
        stage = (yaml.safe_load(Path("dvc.lock").read_text()) or {}).get("stages", {}).get("validate", {})
        for dep in stage.get("deps", []):
            name = Path(dep.get("path", "")).name
            if name in ("Training", "Testing"):
                hashes[name] = dep.get("md5", "")
    return ",".join(f"{k}:{v}" for k, v in sorted(hashes.items())) or "untracked"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _served_requirements() -> list[str]:
    import PIL
    import torchvision

    return [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"torchvision=={torchvision.__version__.split('+')[0]}", f"pillow=={PIL.__version__}",
            f"numpy=={np.__version__}", f"pandas=={pd.__version__}", "pyyaml", "tqdm"]


# ---- evaluation and report: log into the training run -------------------------------------------------------

def read_run_info(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise BrainTumorError(f"{path} not found: it names the MLflow run to log into. Run training first: "
                              "`dvc repro train`.")
    return read_json(path)


def write_run_info(path: str, tracker: RunTracker, model_version: str | None) -> None:
    write_json(path, {"run_id": tracker.run_id, "experiment": tracker.params.tracking.experiment,
                      "registered_model": tracker.params.tracking.registered_model,
                      "model_version": model_version, "tracking_uri": tracking_uri()})


class RunLogger:
    """Reopen the training run (evaluate, report) and log into it."""

    def __init__(self, run_info: dict[str, Any]) -> None:
        self.info = run_info
        mlflow.set_tracking_uri(tracking_uri())
        try:
            mlflow.start_run(run_id=run_info["run_id"])
        except MlflowException as exc:
            raise BrainTumorError(f"MLflow run {run_info['run_id']} not found in {tracking_uri()} ({exc}). "
                                  "Was MLFLOW_TRACKING_URI changed since training? Retrain: `dvc repro -f train`.")

    def log_metrics(self, metrics: dict[str, float], prefix: str = "") -> None:
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None})

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(path, artifact_path=artifact_path)

    def log_figure(self, figure, name: str) -> None:
        mlflow.log_figure(figure, name)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def promote(self, test_macro_f1: float) -> dict[str, Any]:
        """Alias this run's model version `champion` if its test macro-F1 is at least the champion's, else
        `challenger`. Returns the decision and both figures (also logged to the run)."""
        name, version = self.info["registered_model"], self.info.get("model_version")
        if not version:
            return {"decision": "not registered (tracking.log_model is false)"}
        client = MlflowClient()
        champion_f1 = None
        try:
            champion = client.get_model_version_by_alias(name, "champion")
            if str(champion.version) != str(version):  # ModelVersion.version is an int in MLflow 3
                champion_f1 = client.get_run(champion.run_id).data.metrics.get("test_macro_f1")
        except MlflowException:
            champion = None  # no champion yet
        wins = champion_f1 is None or test_macro_f1 >= champion_f1
        alias = "champion" if wins else "challenger"
        client.set_registered_model_alias(name, alias, str(version))
        if wins:  # a former challenger that now wins is no longer the challenger
            try:
                if str(client.get_model_version_by_alias(name, "challenger").version) == str(version):
                    client.delete_registered_model_alias(name, "challenger")
            except MlflowException:
                pass
        decision = {"decision": alias, "model": name, "version": str(version), "test_macro_f1": test_macro_f1,
                    "previous_champion_version": str(champion.version) if champion else None,
                    "previous_champion_test_macro_f1": champion_f1}
        mlflow.set_tags({"promotion": alias, "promotion_previous_champion": str(decision["previous_champion_version"])})
        if champion_f1 is not None:
            mlflow.log_metric("previous_champion_test_macro_f1", champion_f1)
        return decision

    def end(self) -> None:
        mlflow.end_run()


def run_tags_of(run_id: str) -> dict[str, str]:
    """The tags of a run (git commit, data hash, device, ...), for the report."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return dict(MlflowClient().get_run(run_id).data.tags)
    except MlflowException:
        return {}


def download_model_file(model_uri: str) -> Path:
    """models:/brain-tumor-classifier@champion (or runs:/...) -> the local path of its model.pt."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except MlflowException as exc:
        raise BrainTumorError(f"cannot fetch {model_uri} from {tracking_uri()}: {exc}. Check the name and alias "
                              "(e.g. models:/brain-tumor-classifier@champion) and MLFLOW_TRACKING_URI.") from None
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise BrainTumorError(f"{model_uri} holds no model.pt; was it logged by this project?")
    return found[0]
