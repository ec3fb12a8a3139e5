"""MLflow, and the only module that imports it (besides the served model's own code file, mlflow_model.py).

One MLflow run per pipeline run: training opens it and writes its id to `paths.run_info`; evaluation and the
report log into the same run. The tracking URI is `MLFLOW_TRACKING_URI` when set (a team's server), else the
SQLite file `mlflow.db` at the repository root, resolved to an absolute path so `dvc exp run --temp`, which runs
in a copy under `.dvc/tmp/exps/`, logs to the same store (a relative `sqlite:///x.db` is resolved the same way).

Lineage (MLflow 3): the run's datasets are the manifest's train / val / test rows (contexts training / validation
/ testing, digest = the DVC hash of the folder they come from); the test metrics are linked to the LoggedModel
that `pyfunc.log_model` creates; the registered version gets a description, tags and the model card.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from braintumor.config import Params
from braintumor.errors import BrainTumorError
from braintumor.fileio import project_root, read_json, write_json
from braintumor.tracking.provenance import dvc_data_hash, dvc_data_hashes, git, git_dirty, run_name

if TYPE_CHECKING:
    from braintumor.training.loop import EpochStats  # the training core is not loaded by evaluate or report

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).parents[1]  # src/braintumor: the code logged with every served model
# The MLflow 3 UI opens an experiment in its GenAI view unless told otherwise: the experiment tag its type
# selector writes, and the `workflowType` of its links (the side bar's GenAI / Model training switch).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
RUNS_VIEW = "workflowType=machine_learning"
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


@dataclass(frozen=True)
class SameScansComparison:
    """The new model and the current champion scored on the very same rows (pipeline.evaluate builds it).

    `champion_version` is None when there is no champion yet or the champion is this run's own version (a rerun of
    evaluate); `champion_value` is None with `unscored_reason` when the champion could not be scored on the rows."""

    promotion_metric: str  # evaluate.promotion_metric
    metric: str  # what was computed on the rows, e.g. leak_free_macro_f1 (or macro_f1 when no scan is leak-free)
    scans: int
    compared_on: str  # the DVC hash of the folder the rows come from (`Testing:<md5>.dir`), or a rows fingerprint
    value: float
    champion_version: str | None = None
    champion_value: float | None = None
    unscored_reason: str | None = None

    @property
    def new_wins(self) -> bool:
        """Ties keep the champion; a champion that could not be scored on these rows gives way."""
        return self.champion_version is None or self.champion_value is None or self.value > self.champion_value


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{project_root() / 'mlflow.db'}"
    relative_sqlite = uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri
    if relative_sqlite:  # e.g. sqlite:///mlflow.db: from the repository root, not a `dvc exp run --temp` copy
        return f"sqlite:///{project_root() / uri[len('sqlite:///') :]}"
    return uri


def _use_store(experiment: str) -> str:
    """Point mlflow at the store and return the experiment id (created with artifacts beside the SQLite file).

    Two runs starting at once (a `dvc exp run --queue` worker each) may both create the experiment or its tag;
    the one that loses that race finds the winner's on its second try."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    for _ in range(2):
        try:
            return _experiment_id(experiment, uri)
        except MlflowException as exc:
            error = exc
            time.sleep(0.5)
    raise BrainTumorError(
        f"cannot reach the MLflow tracking store {uri}: {error}. Check MLFLOW_TRACKING_URI, "
        "or unset it to use the local mlflow.db."
    )


def _experiment_id(experiment: str, uri: str) -> str:
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = (project_root() / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
        return mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if key not in found.tags:  # an experiment made before this tag; a type chosen in the UI stays
            MlflowClient().set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def ui_base(uri: str) -> str:
    """The MLflow UI's address for a tracking URI: the server itself, or what `mlflow ui` serves for a file."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_ADDRESS


def runs_table_url(experiment: str) -> str:
    """The UI's runs table of `experiment` (`#/experiments/<id>/runs`), in its Model training view."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.get_experiment_by_name(experiment)
    except MlflowException as exc:
        raise BrainTumorError(f"cannot reach the MLflow tracking store {uri}: {exc}") from None
    if found is None:
        raise BrainTumorError(f"no experiment {experiment!r} in {uri} yet: run the pipeline first (`dvc repro`).")
    return f"{ui_base(uri)}/#/experiments/{found.experiment_id}/runs?{RUNS_VIEW}"


class RunTracker:
    """Implements training's EpochLogger; everything a training run sends to MLflow.

    The run is named by provenance.run_name, records system metrics while it is open (CPU, memory, disk, network;
    GPU through nvidia-ml-py where an NVIDIA driver is present) and lists the train and val rows as its datasets."""

    def __init__(
        self, params: Params, resume_run_id: str | None = None, training_rows: pd.DataFrame | None = None
    ) -> None:
        self.params = params
        self.experiment_id = _use_store(params.tracking.experiment)
        self.run = mlflow.start_run(
            run_id=resume_run_id,
            experiment_id=None if resume_run_id else self.experiment_id,
            run_name=None if resume_run_id else run_name(params),
            log_system_metrics=True,
        )
        self.run_id = self.run.info.run_id
        self.model_id: str | None = None  # the LoggedModel, once log_served_model made it
        self._logged_epochs = {m.step for m in MlflowClient().get_metric_history(self.run_id, "val_macro_f1")}
        if not resume_run_id:
            mlflow.log_params({k: _param_value(v) for k, v in params.flat().items()})
            mlflow.set_tags(run_tags(params))
            if training_rows is not None:
                log_datasets(training_rows, params.paths.data)

    def log_epoch(self, stats: EpochStats) -> None:
        if stats.epoch in self._logged_epochs:  # a resumed run replays the epochs it has
            return
        self._logged_epochs.add(stats.epoch)
        values = {k: float(v) for k, v in vars(stats).items() if k not in ("epoch", "seconds")}
        mlflow.log_metrics(values, step=stats.epoch)

    def finish_training(self, summary: dict[str, Any], device: str, precision: str) -> None:
        """The summary metrics (log_model then copies these step-0 metrics onto the LoggedModel, without a dataset,
        so its page shows them next to the test figures)."""
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        mlflow.set_tags({"device": device, "precision": precision})
        for path in (self.params.paths.train_metrics, self.params.paths.validation_report):
            mlflow.log_artifact(path, artifact_path="metrics")
        mlflow.log_artifacts(self.params.paths.train_plots, artifact_path="plots/train")

    def log_served_model(
        self, model_path: str, example: pd.DataFrame, example_output: pd.DataFrame, *, code: Path, params: dict
    ) -> str:
        """Log the pyfunc model (models from code: `code` is its file, the package is logged with it) and register
        it; returns the new version number. `params`: the model's inference params and their defaults.

        MLflow 3 makes it a LoggedModel (self.model_id) carrying the run's params and provenance tags; evaluation
        links the test metrics to it."""
        tags = run_tags(self.params)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code),
            artifacts={"model": str(Path(model_path).resolve())},
            code_paths=[str(PACKAGE)],
            signature=infer_signature(example, example_output, params=params),
            input_example=example,
            pip_requirements=_served_requirements(),
            registered_model_name=self.params.tracking.registered_model,
            params={k: _param_value(v) for k, v in self.params.flat().items()},
            tags={k: tags[k] for k in ("git_commit", "data_dvc_hash")},
        )
        self.model_id = info.model_id
        return str(info.registered_model_version)

    def end(self, status: str = "FINISHED") -> None:
        mlflow.end_run(status=status)


def run_tags(params: Params) -> dict[str, str]:
    return {
        "git_commit": git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(git_dirty()).lower(),
        "data_dvc_hash": dvc_data_hash(params.paths.data),
        "torch_version": torch.__version__,
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
    }


def log_datasets(rows: pd.DataFrame, data_dir: str) -> dict[str, Any]:
    """Each split among the manifest `rows` as a dataset input of the active run; returns them by split.

    The digest is DVC's hash of the folder the rows come from (data/Training for train and val, data/Testing for
    test, as in data/<folder>.dvc or dvc.lock), or MLflow's own digest of the rows where DVC tracks neither. The
    name adds a fingerprint of the rows (`val-5e1f0a2c`): MLflow keeps one record per (name, digest), and a
    changed split (val_fraction, split_seed, ...) draws other rows from the same folder version."""
    hashes = dvc_data_hashes(data_dir)
    datasets = {}
    for split, context in DATASET_CONTEXTS.items():
        part = rows[rows["split"] == split].reset_index(drop=True)
        if part.empty:
            continue
        folder = "Testing" if split == "test" else "Training"
        fingerprint = hashlib.sha256(
            "\n".join(sorted(part["sha256"] + " " + part["path"] + " " + part["label"])).encode()
        ).hexdigest()[:8]
        # MLflow's UserWarnings here are not for us: "source can be interpreted in multiple ways" (both readings
        # are the local folder) and the hint about integer columns in a *model* input schema.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(
                part,
                source=str((Path(data_dir) / folder).resolve()),
                targets="label",
                name=f"{split}-{fingerprint}",
                digest=hashes.get(folder),
            )
            mlflow.log_input(dataset, context=context, tags={"dvc_hash": hashes.get(folder, "untracked")})
        datasets[split] = dataset
    return datasets


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _served_requirements() -> list[str]:
    import nibabel
    import PIL
    import pydicom
    import torchvision

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"torchvision=={torchvision.__version__.split('+')[0]}",
        f"pillow=={PIL.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"pydicom=={pydicom.__version__}",
        f"nibabel=={nibabel.__version__}",
        "pyyaml",
        "tqdm",
    ]


# ---- evaluation and report: log into the training run -------------------------------------------------------


def read_run_info(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise BrainTumorError(
            f"{path} not found: it names the MLflow run to log into. Run training first: `dvc repro train`."
        )
    return read_json(path)


def write_run_info(path: str, tracker: RunTracker, model_version: str | None) -> None:
    uri = tracking_uri()
    write_json(
        path,
        {
            "run_id": tracker.run_id,
            "experiment": tracker.params.tracking.experiment,
            "experiment_id": tracker.experiment_id,
            "registered_model": tracker.params.tracking.registered_model,
            "model_version": model_version,
            "model_id": tracker.model_id,
            "tracking_uri": uri,
            "ui_url": f"{ui_base(uri)}/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}",
        },
    )


class RunLogger:
    """Reopen the training run (evaluate, report) and log into it."""

    def __init__(self, run_info: dict[str, Any]) -> None:
        self.info = run_info
        self.model_id = run_info.get("model_id")  # the LoggedModel the test metrics belong to
        self.test_set = None
        mlflow.set_tracking_uri(tracking_uri())
        try:
            mlflow.start_run(run_id=run_info["run_id"])
        except MlflowException as exc:
            raise BrainTumorError(
                f"MLflow run {run_info['run_id']} not found in {tracking_uri()} ({exc}). "
                "Was MLFLOW_TRACKING_URI changed since training? Retrain: `dvc repro -f train`."
            )

    def log_metrics(self, metrics: dict[str, float], prefix: str = "") -> None:
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None})

    def log_test_set(self, rows: pd.DataFrame, data_dir: str) -> None:
        """The Testing rows evaluated, as the run's `testing` dataset (the test metrics then name it)."""
        self.test_set = log_datasets(rows, data_dir).get("test")

    def log_test_metrics(self, metrics: dict[str, float], prefix: str) -> None:
        """Metrics of the model on the test set: on the run, and on its LoggedModel with the dataset they come
        from, so MLflow's model pages show them."""
        mlflow.log_metrics(
            {f"{prefix}{k}": float(v) for k, v in metrics.items() if v is not None},
            model_id=self.model_id,
            dataset=self.test_set,
        )

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(path, artifact_path=artifact_path)

    def log_figure(self, figure, name: str) -> None:
        mlflow.log_figure(figure, name)

    def run_tags(self) -> dict[str, str]:
        return dict(MlflowClient().get_run(self.info["run_id"]).data.tags)

    def champion_version(self) -> str | None:
        """The version holding `champion` when it is another version than this run's, else None."""
        name, version = self.info["registered_model"], self.info.get("model_version")
        try:
            champion = MlflowClient().get_model_version_by_alias(name, "champion")
        except MlflowException:
            return None  # no champion yet
        return None if str(champion.version) == str(version) else str(champion.version)  # an int in MLflow 3

    def model_file_of(self, version: str) -> Path:
        """The model.pt of a registered version of this run's model, downloaded."""
        return download_model_file(f"models:/{self.info['registered_model']}/{version}")

    def promote(self, comparison: SameScansComparison) -> dict[str, Any]:
        """Alias this run's model version `champion` if it beats the current champion on the same rows, else
        `challenger` (ties keep the champion). Returns the decision (also logged to the run)."""
        name, version = self.info["registered_model"], self.info.get("model_version")
        if not version:
            return {"decision": "not registered (tracking.log_model is false)"}
        client = MlflowClient()
        alias = "champion" if comparison.new_wins else "challenger"
        client.set_registered_model_alias(name, alias, str(version))
        if alias == "champion":  # a former challenger that now wins is no longer the challenger
            try:
                if str(client.get_model_version_by_alias(name, "challenger").version) == str(version):
                    client.delete_registered_model_alias(name, "challenger")
            except MlflowException:
                pass
        decision = {
            "decision": alias,
            "model": name,
            "version": str(version),
            "promotion_metric": comparison.promotion_metric,
            "metric": comparison.metric,
            "value": comparison.value,
            "scans": comparison.scans,
            "compared_on": comparison.compared_on,
            "previous_champion_version": comparison.champion_version,
            "previous_champion_value": comparison.champion_value,
            "champion_unscored_reason": comparison.unscored_reason,
        }
        mlflow.set_tags(
            {
                "promotion": alias,
                "promotion_metric": comparison.metric,
                "promotion_compared_on": comparison.compared_on,
                "promotion_previous_champion": str(comparison.champion_version),
            }
        )
        mlflow.log_metric(f"promotion_{comparison.metric}", comparison.value)
        if comparison.champion_value is not None:
            mlflow.log_metric(f"previous_champion_{comparison.metric}", comparison.champion_value)
        return decision

    def document_model(self, card_path: str, description: str, tags: dict[str, str]) -> None:
        """The model card goes with the model (its LoggedModel's artifacts, so `models:/name/version` holds it)
        and with the run (beside report.html); the registered version gets the description and the tags."""
        mlflow.log_artifact(card_path, artifact_path="report")
        client = MlflowClient()
        if self.model_id:
            client.log_model_artifact(self.model_id, card_path)
            client.set_logged_model_tags(self.model_id, tags)
        name, version = self.info["registered_model"], self.info.get("model_version")
        if version:
            client.update_model_version(name, str(version), description=description)
            for key, value in tags.items():
                client.set_model_version_tag(name, str(version), key, value)

    def describe_registered_model(self, description: str, tags: dict[str, str]) -> None:
        """The registered model itself (not one version): what it classifies, its use, where the card is."""
        name, client = self.info["registered_model"], MlflowClient()
        if not self.info.get("model_version"):
            return
        client.update_registered_model(name, description=description)
        for key, value in tags.items():
            client.set_registered_model_tag(name, key, value)

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
        raise BrainTumorError(
            f"cannot fetch {model_uri} from {tracking_uri()}: {exc}. Check the name and alias "
            "(e.g. models:/brain-tumor-classifier@champion) and MLFLOW_TRACKING_URI."
        ) from None
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise BrainTumorError(f"{model_uri} holds no model.pt; was it logged by this project?")
    return found[0]


def registered_version(model_uri: str) -> dict[str, Any] | None:
    """What the registry says of models:/NAME/VERSION or models:/NAME@ALIAS (for the page's header): name, version,
    aliases, registration time (ms since the epoch), data hash and git commit. None for any other URI."""
    rest = model_uri[len("models:/") :].strip("/") if model_uri.startswith("models:/") else ""
    name, alias = rest.split("@", 1) if "@" in rest else (rest.rpartition("/")[0], None)
    if not name:
        return None  # runs:/..., a LoggedModel id (models:/m-...), a file
    client = MlflowClient(tracking_uri())
    try:
        version = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, rest.rpartition("/")[2])
        )
    except MlflowException as exc:
        raise BrainTumorError(f"cannot read {model_uri} from {tracking_uri()}: {exc}") from None
    return {
        "name": version.name,
        "version": str(version.version),
        "aliases": sorted(version.aliases),
        "registered": version.creation_timestamp,
        "data_dvc_hash": version.tags.get("data_dvc_hash"),
        "git_commit": version.tags.get("git_commit"),
    }


def model_signature(model_uri: str):
    """The logged signature (mlflow.models.ModelSignature, or None) of an MLflow model: models:/name@alias,
    runs:/..., or a model folder; only its MLmodel file is fetched (deploy/spark_score.py checks it on the driver)."""
    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.models.get_model_info(model_uri).signature
    except (MlflowException, OSError) as exc:
        raise BrainTumorError(
            f"cannot fetch {model_uri} from {tracking_uri()}: {exc}. Check the name and alias "
            "(e.g. models:/brain-tumor-classifier@champion) and MLFLOW_TRACKING_URI."
        ) from None


def version_of_run(name: str, run_id: str, model_uri: str | None = None) -> str | None:
    """The registered version of `name` that a model URI's alias points at, else the newest one logged by
    `run_id`; None when the store cannot say (for the prediction log, which never fails an answer)."""
    mlflow.set_tracking_uri(tracking_uri())
    client = MlflowClient()
    try:
        if model_uri and model_uri.startswith(f"models:/{name}@"):
            return str(client.get_model_version_by_alias(name, model_uri.split("@", 1)[1]).version)
        versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return str(max(int(v.version) for v in versions)) if versions else None
    except Exception:  # an unreachable or older store: the log says "version unknown"
        log.warning("model version of run %s not found in %s", run_id, tracking_uri(), exc_info=True)
        return None
