"""Champion/challenger promotion (RunLogger.promote) against a real SQLite MLflow store."""

from __future__ import annotations

import itertools

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from braintumor.errors import BrainTumorError
from braintumor.tracking import RunLogger

_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds); each test registers its own model name."""
    root = tmp_path_factory.mktemp("mlflow")
    (root / "model").mkdir()
    return root


@pytest.fixture
def registry(store, monkeypatch):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("promotion")
    experiment_id = (experiment.experiment_id if experiment else
                     mlflow.create_experiment("promotion", artifact_location=(store / "artifacts").as_uri()))
    name = f"classifier-{next(_names)}"
    MlflowClient().create_registered_model(name)
    yield Registry(store, uri, experiment_id, name)
    while mlflow.active_run():  # never leave a run open for the next test
        mlflow.end_run()


class Registry:
    def __init__(self, store, uri: str, experiment_id: str, name: str) -> None:
        self.store, self.uri, self.experiment_id, self.name = store, uri, experiment_id, name
        self.client = MlflowClient()

    def trained_version(self, test_macro_f1: float | None) -> dict:
        """A finished training run with its registered model version, as `reports/mlflow_run.json` describes it;
        the run carries test_macro_f1 as the evaluate stage logs it before promoting."""
        with mlflow.start_run(experiment_id=self.experiment_id) as run:
            if test_macro_f1 is not None:
                mlflow.log_metric("test_macro_f1", test_macro_f1)
        version = self.client.create_model_version(self.name, source=(self.store / "model").as_uri(),
                                                   run_id=run.info.run_id)
        # write_run_info stores the version as a string (MLflow's ModelVersion.version is an int)
        return {"run_id": run.info.run_id, "registered_model": self.name, "model_version": str(version.version),
                "experiment": "promotion", "tracking_uri": self.uri}

    def promote(self, run_info: dict, test_macro_f1: float) -> dict:
        logger = RunLogger(run_info)
        try:
            return logger.promote(test_macro_f1)
        finally:
            logger.end()

    def alias(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def run(self, run_info: dict):
        return self.client.get_run(run_info["run_id"])


def test_first_version_becomes_champion(registry):
    first = registry.trained_version(0.70)
    decision = registry.promote(first, 0.70)
    assert decision["decision"] == "champion"
    assert decision["version"] == first["model_version"] == "1"
    assert decision["model"] == registry.name
    assert decision["test_macro_f1"] == pytest.approx(0.70)
    assert decision["previous_champion_version"] is None
    assert decision["previous_champion_test_macro_f1"] is None
    assert registry.alias("champion") == "1"
    assert registry.alias("challenger") is None
    run = registry.run(first)
    assert run.data.tags["promotion"] == "champion"
    assert run.info.status == "FINISHED"  # the reopened run is closed again


@pytest.mark.parametrize("new_f1", [0.80, 0.60], ids=["better", "equal"])
def test_better_or_equal_macro_f1_takes_the_champion_alias(registry, new_f1):
    first = registry.trained_version(0.60)
    registry.promote(first, 0.60)
    second = registry.trained_version(new_f1)
    decision = registry.promote(second, new_f1)
    assert decision["decision"] == "champion"
    assert decision["version"] == "2"
    assert decision["test_macro_f1"] == pytest.approx(new_f1)
    assert decision["previous_champion_version"] == "1"
    assert decision["previous_champion_test_macro_f1"] == pytest.approx(0.60)
    assert registry.alias("champion") == "2"
    assert registry.alias("challenger") is None
    run = registry.run(second)
    assert run.data.tags["promotion"] == "champion"
    assert run.data.tags["promotion_previous_champion"] == "1"
    assert run.data.metrics["previous_champion_test_macro_f1"] == pytest.approx(0.60)


def test_worse_macro_f1_becomes_challenger_and_champion_stays(registry):
    first = registry.trained_version(0.75)
    registry.promote(first, 0.75)
    second = registry.trained_version(0.70)
    decision = registry.promote(second, 0.70)
    assert decision["decision"] == "challenger"
    assert decision["version"] == "2"
    assert decision["test_macro_f1"] == pytest.approx(0.70)
    assert decision["previous_champion_version"] == "1"
    assert decision["previous_champion_test_macro_f1"] == pytest.approx(0.75)
    assert registry.alias("champion") == "1"
    assert registry.alias("challenger") == "2"
    run = registry.run(second)
    assert run.data.tags["promotion"] == "challenger"
    assert run.data.tags["promotion_previous_champion"] == "1"
    assert run.data.metrics["previous_champion_test_macro_f1"] == pytest.approx(0.75)
    assert registry.run(first).data.tags["promotion"] == "champion"  # the champion's run is left alone


def test_the_champion_is_compared_with_the_best_so_far_not_the_last(registry):
    # v1 0.70 champion; v2 0.65 challenger; v3 0.68 loses to v1 (not to v2), v4 0.71 wins against v1.
    versions = [registry.trained_version(f1) for f1 in (0.70, 0.65, 0.68, 0.71)]
    decisions = [registry.promote(info, f1)["decision"] for info, f1 in zip(versions, (0.70, 0.65, 0.68, 0.71))]
    assert decisions == ["champion", "challenger", "challenger", "champion"]
    assert registry.alias("champion") == "4"
    assert registry.alias("challenger") == "3"


def test_re_evaluating_the_champion_keeps_it_champion(registry):
    first = registry.trained_version(0.70)
    registry.promote(first, 0.70)
    decision = registry.promote(first, 0.65)  # e.g. `dvc repro evaluate` again on a changed test set
    assert decision["decision"] == "champion"
    assert decision["previous_champion_test_macro_f1"] is None  # not compared with itself
    assert registry.alias("champion") == "1"


def test_unregistered_model_is_not_promoted(registry):
    info = {**registry.trained_version(0.9), "model_version": None}
    decision = registry.promote(info, 0.9)
    assert decision["decision"].startswith("not registered")
    assert registry.alias("champion") is None
    assert "promotion" not in registry.run(info).data.tags


def test_run_logger_names_a_missing_run(registry):
    info = {**registry.trained_version(0.5), "run_id": "0" * 32}
    with pytest.raises(BrainTumorError, match="not found"):
        RunLogger(info)
    assert mlflow.active_run() is None
