"""Champion/challenger promotion (RunLogger.promote) against a real SQLite MLflow store. What it is given is a
SameScansComparison: the new model and the champion scored on the same rows (pipeline.evaluate builds it; the
end-to-end path is tests/test_champion.py)."""

from __future__ import annotations

import itertools
import typing

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from braintumor.config import EvaluateConfig, Params, params_from_dict
from braintumor.errors import BrainTumorError, ConfigError
from braintumor.pipeline import SAME_SCANS
from braintumor.tracking.runs import RunLogger, SameScansComparison

_names = itertools.count()


@pytest.fixture(scope="module")
def store(module_dir):
    """One SQLite store for the module (creating one takes seconds); each test registers its own model name."""
    root = module_dir
    (root / "model").mkdir()
    return root


@pytest.fixture
def registry(store, monkeypatch):
    uri = f"sqlite:///{store / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name("promotion")
    experiment_id = (
        experiment.experiment_id
        if experiment
        else mlflow.create_experiment("promotion", artifact_location=(store / "artifacts").as_uri())
    )
    name = f"classifier-{next(_names)}"
    MlflowClient().create_registered_model(name)
    yield Registry(store, uri, experiment_id, name)
    while mlflow.active_run():  # never leave a run open for the next test
        mlflow.end_run()


class Registry:
    def __init__(self, store, uri: str, experiment_id: str, name: str) -> None:
        self.store, self.uri, self.experiment_id, self.name = store, uri, experiment_id, name
        self.client = MlflowClient()

    def trained_version(self, stored_macro_f1: float = 0.99) -> dict:
        """A finished training run with its registered model version, as `reports/mlflow_run.json` describes it;
        its stored test figure (from whatever scans it was evaluated on) must never decide."""
        with mlflow.start_run(experiment_id=self.experiment_id) as run:
            mlflow.log_metric("test_leak_free_macro_f1", stored_macro_f1)
        version = self.client.create_model_version(
            self.name, source=(self.store / "model").as_uri(), run_id=run.info.run_id
        )
        # write_run_info stores the version as a string (MLflow's ModelVersion.version is an int)
        return {
            "run_id": run.info.run_id,
            "registered_model": self.name,
            "model_version": str(version.version),
            "experiment": "promotion",
            "tracking_uri": self.uri,
        }

    def promote(
        self, run_info: dict, value: float, champion_value: float | None = None, reason: str | None = None
    ) -> dict:
        """What evaluate does: find the champion, (score both on the same rows: given here), promote."""
        logger = RunLogger(run_info)
        try:
            champion = logger.champion_version()
            comparison = SameScansComparison(
                "leak_free_macro_f1",
                "leak_free_macro_f1",
                394,
                "Testing:abc.dir",
                value,
                champion,
                champion_value if champion else None,
                reason if champion else None,
            )
            return logger.promote(comparison)
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
    first = registry.trained_version()
    decision = registry.promote(first, 0.70)
    assert decision["decision"] == "champion"
    assert decision["version"] == first["model_version"] == "1"
    assert decision["model"] == registry.name
    assert decision["value"] == pytest.approx(0.70) and decision["scans"] == 394
    assert decision["previous_champion_version"] is None and decision["previous_champion_value"] is None
    assert registry.alias("champion") == "1" and registry.alias("challenger") is None
    run = registry.run(first)
    assert run.data.tags["promotion"] == "champion"
    assert run.data.tags["promotion_compared_on"] == "Testing:abc.dir"
    assert run.data.metrics["promotion_leak_free_macro_f1"] == pytest.approx(0.70)
    assert run.info.status == "FINISHED"  # the reopened run is closed again


def test_better_on_the_same_scans_takes_the_champion_alias_whatever_the_champion_stored(registry):
    first = registry.trained_version(stored_macro_f1=0.96)  # on a synthetic sample's Testing set, say
    registry.promote(first, 0.96)
    second = registry.trained_version(stored_macro_f1=0.51)
    decision = registry.promote(second, 0.51, champion_value=0.31)  # version 1 on the new Testing scans: 0.31
    assert decision["decision"] == "champion" and decision["version"] == "2"
    assert decision["previous_champion_version"] == "1"
    assert decision["previous_champion_value"] == pytest.approx(0.31)
    assert registry.alias("champion") == "2" and registry.alias("challenger") is None
    run = registry.run(second)
    assert run.data.tags["promotion"] == "champion" and run.data.tags["promotion_previous_champion"] == "1"
    assert run.data.metrics["previous_champion_leak_free_macro_f1"] == pytest.approx(0.31)


@pytest.mark.parametrize("new_value", [0.70, 0.75], ids=["worse", "tie"])
def test_worse_or_equal_on_the_same_scans_becomes_challenger_and_the_champion_stays(registry, new_value):
    first = registry.trained_version()
    registry.promote(first, 0.75)
    second = registry.trained_version()
    decision = registry.promote(second, new_value, champion_value=0.75)
    assert decision["decision"] == "challenger"
    assert registry.alias("champion") == "1" and registry.alias("challenger") == "2"
    assert registry.run(second).data.tags["promotion"] == "challenger"
    assert registry.run(first).data.tags["promotion"] == "champion"  # the champion's run is left alone


def test_a_former_challenger_that_wins_loses_the_challenger_alias(registry):
    versions = [registry.trained_version() for _ in range(3)]
    assert registry.promote(versions[0], 0.70)["decision"] == "champion"
    assert registry.promote(versions[1], 0.65, champion_value=0.70)["decision"] == "challenger"
    assert registry.promote(versions[1], 0.72, champion_value=0.70)["decision"] == "champion"  # re-evaluated
    assert registry.alias("champion") == "2" and registry.alias("challenger") is None
    assert registry.promote(versions[2], 0.60, champion_value=0.72)["decision"] == "challenger"
    assert registry.alias("challenger") == "3"


def test_a_champion_that_cannot_be_scored_gives_way_with_the_reason(registry):
    first = registry.trained_version()
    registry.promote(first, 0.90)
    second = registry.trained_version()
    decision = registry.promote(second, 0.40, reason="it was trained on classes ['a', 'b']")
    assert decision["decision"] == "champion" and decision["previous_champion_version"] == "1"
    assert decision["previous_champion_value"] is None
    assert decision["champion_unscored_reason"] == "it was trained on classes ['a', 'b']"
    assert registry.alias("champion") == "2"


def test_re_evaluating_the_champion_keeps_it_champion(registry):
    first = registry.trained_version()
    registry.promote(first, 0.70)
    decision = registry.promote(first, 0.65)  # e.g. `dvc repro evaluate` again on a changed test set
    assert decision["decision"] == "champion" and decision["value"] == pytest.approx(0.65)
    assert decision["previous_champion_version"] is None  # not compared with itself
    assert registry.alias("champion") == "1"


def test_unregistered_model_is_not_promoted(registry):
    info = {**registry.trained_version(), "model_version": None}
    decision = registry.promote(info, 0.9)
    assert decision["decision"].startswith("not registered")
    assert registry.alias("champion") is None
    assert "promotion" not in registry.run(info).data.tags


def test_run_logger_names_a_missing_run(registry):
    info = {**registry.trained_version(), "run_id": "0" * 32}
    with pytest.raises(BrainTumorError, match="not found"):
        RunLogger(info)
    assert mlflow.active_run() is None


def test_every_promotion_metric_param_names_the_rows_and_the_metric_both_models_are_scored_on():
    allowed = typing.get_args(typing.get_type_hints(EvaluateConfig)["promotion_metric"])
    assert set(allowed) == set(SAME_SCANS)
    assert Params().evaluate.promotion_metric == "leak_free_macro_f1"
    assert SAME_SCANS["leak_free_macro_f1"] == ("leak_free", "macro_f1")
    with pytest.raises(
        ConfigError,
        match=r"evaluate.promotion_metric = 'f1' is not allowed: expected one of "
        r"leak_free_macro_f1, leak_free_accuracy, macro_f1, accuracy, val_macro_f1",
    ):
        params_from_dict({"evaluate": {"promotion_metric": "f1"}})
