"""Champion/challenger promotion (RunLogger.promote) against a real SQLite MLflow store: what it compares is\nevaluate.promotion_metric, read from the runs' own metrics."""

from __future__ import annotations

import itertools
import typing

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from braintumor.config import EvaluateConfig, Params, params_from_dict
from braintumor.errors import BrainTumorError, ConfigError
from braintumor.tracking import PROMOTION_KEYS, RunLogger

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

    def trained_version(self, test_macro_f1: float | None, **metrics: float) -> dict:
        """A finished training run with its registered model version, as `reports/mlflow_run.json` describes it;
        the run carries test_macro_f1 (and any other `metrics`) as training and evaluate log them."""
        with mlflow.start_run(experiment_id=self.experiment_id) as run:
            if test_macro_f1 is not None:
                mlflow.log_metric("test_macro_f1", test_macro_f1)
            if metrics:
                mlflow.log_metrics(metrics)
        version = self.client.create_model_version(self.name, source=(self.store / "model").as_uri(),
                                                   run_id=run.info.run_id)
        # write_run_info stores the version as a string (MLflow's ModelVersion.version is an int)
        return {"run_id": run.info.run_id, "registered_model": self.name, "model_version": str(version.version),
                "experiment": "promotion", "tracking_uri": self.uri}

    def promote(self, run_info: dict, metric: str = "macro_f1") -> dict:
        logger = RunLogger(run_info)
        try:
            return logger.promote(metric)
        finally:
            logger.end()

    def reevaluated(self, run_info: dict, test_macro_f1: float) -> None:
        """The evaluate stage ran again on this run (e.g. a changed Testing set) and logged a new figure."""
        with mlflow.start_run(run_id=run_info["run_id"]):
            mlflow.log_metric("test_macro_f1", test_macro_f1)

    def alias(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException:
            return None

    def run(self, run_info: dict):
        return self.client.get_run(run_info["run_id"])


def test_first_version_becomes_champion(registry):
    first = registry.trained_version(0.70)
    decision = registry.promote(first)
    assert decision["decision"] == "champion"
    assert decision["version"] == first["model_version"] == "1"
    assert decision["model"] == registry.name
    assert decision["value"] == pytest.approx(0.70)
    assert decision["previous_champion_version"] is None
    assert decision["previous_champion_value"] is None
    assert registry.alias("champion") == "1"
    assert registry.alias("challenger") is None
    run = registry.run(first)
    assert run.data.tags["promotion"] == "champion"
    assert run.info.status == "FINISHED"  # the reopened run is closed again


@pytest.mark.parametrize("new_f1", [0.80, 0.60], ids=["better", "equal"])
def test_better_or_equal_macro_f1_takes_the_champion_alias(registry, new_f1):
    first = registry.trained_version(0.60)
    registry.promote(first)
    second = registry.trained_version(new_f1)
    decision = registry.promote(second)
    assert decision["decision"] == "champion"
    assert decision["version"] == "2"
    assert decision["value"] == pytest.approx(new_f1)
    assert decision["previous_champion_version"] == "1"
    assert decision["previous_champion_value"] == pytest.approx(0.60)
    assert registry.alias("champion") == "2"
    assert registry.alias("challenger") is None
    run = registry.run(second)
    assert run.data.tags["promotion"] == "champion"
    assert run.data.tags["promotion_previous_champion"] == "1"
    assert run.data.metrics["previous_champion_test_macro_f1"] == pytest.approx(0.60)


def test_worse_macro_f1_becomes_challenger_and_champion_stays(registry):
    first = registry.trained_version(0.75)
    registry.promote(first)
    second = registry.trained_version(0.70)
    decision = registry.promote(second)
    assert decision["decision"] == "challenger"
    assert decision["version"] == "2"
    assert decision["value"] == pytest.approx(0.70)
    assert decision["previous_champion_version"] == "1"
    assert decision["previous_champion_value"] == pytest.approx(0.75)
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
    decisions = [registry.promote(info)["decision"] for info in versions]
    assert decisions == ["champion", "challenger", "challenger", "champion"]
    assert registry.alias("champion") == "4"
    assert registry.alias("challenger") == "3"


def test_re_evaluating_the_champion_keeps_it_champion(registry):
    first = registry.trained_version(0.70)
    registry.promote(first)
    registry.reevaluated(first, 0.65)  # e.g. `dvc repro evaluate` again on a changed test set
    decision = registry.promote(first)
    assert decision["decision"] == "champion"
    assert decision["value"] == pytest.approx(0.65)
    assert decision["previous_champion_value"] is None  # not compared with itself
    assert registry.alias("champion") == "1"


def test_unregistered_model_is_not_promoted(registry):
    info = {**registry.trained_version(0.9), "model_version": None}
    decision = registry.promote(info)
    assert decision["decision"].startswith("not registered")
    assert registry.alias("champion") is None
    assert "promotion" not in registry.run(info).data.tags


def test_run_logger_names_a_missing_run(registry):
    info = {**registry.trained_version(0.5), "run_id": "0" * 32}
    with pytest.raises(BrainTumorError, match="not found"):
        RunLogger(info)
    assert mlflow.active_run() is None


# ---- what is compared: evaluate.promotion_metric --------------------------------------------------------------

def _leaky_and_honest(registry) -> tuple[dict, dict]:
    """v1 looks better on all Testing (it memorised the copies), v2 is better on the leak-free scans."""
    leaky = registry.trained_version(0.90, test_leak_free_macro_f1=0.40, best_val_macro_f1=0.70)
    honest = registry.trained_version(0.80, test_leak_free_macro_f1=0.60, best_val_macro_f1=0.72)
    return leaky, honest


def test_default_promotion_metric_prefers_the_leak_free_figure(registry):
    assert Params().evaluate.promotion_metric == "leak_free_macro_f1"
    leaky, honest = _leaky_and_honest(registry)
    registry.promote(leaky, "leak_free_macro_f1")
    decision = registry.promote(honest, "leak_free_macro_f1")
    assert decision["decision"] == "champion" and decision["metric"] == "test_leak_free_macro_f1"
    assert decision["value"] == pytest.approx(0.60) and decision["previous_champion_value"] == pytest.approx(0.40)
    assert registry.alias("champion") == "2" and registry.alias("challenger") is None
    run = registry.run(honest)
    assert run.data.tags["promotion_metric"] == "test_leak_free_macro_f1"
    assert run.data.metrics["previous_champion_test_leak_free_macro_f1"] == pytest.approx(0.40)


def test_all_testing_promotion_metric_keeps_the_leaky_champion(registry):
    leaky, honest = _leaky_and_honest(registry)
    registry.promote(leaky, "macro_f1")
    decision = registry.promote(honest, "macro_f1")
    assert decision["decision"] == "challenger" and decision["metric"] == "test_macro_f1"
    assert registry.alias("champion") == "1" and registry.alias("challenger") == "2"


def test_without_leak_free_scans_the_comparison_falls_back_to_val(registry):
    first = registry.trained_version(0.90, test_leak_free_macro_f1=0.40, best_val_macro_f1=0.70)
    registry.promote(first, "leak_free_macro_f1")
    # no Testing scan of the second run is leak-free: evaluate logged no test_leak_free_macro_f1
    second = registry.trained_version(0.50, best_val_macro_f1=0.75)
    decision = registry.promote(second, "leak_free_macro_f1")
    assert decision["metric"] == "best_val_macro_f1" and decision["decision"] == "champion"
    assert decision["value"] == pytest.approx(0.75) and decision["previous_champion_value"] == pytest.approx(0.70)
    assert registry.run(second).data.tags["promotion_metric"] == "best_val_macro_f1"


def test_val_fallback_compares_the_saved_models_the_weight_averages_when_both_have_one(registry):
    first = registry.trained_version(0.90, best_val_macro_f1=0.80, swa_val_macro_f1=0.78)
    registry.promote(first, "val_macro_f1")
    second = registry.trained_version(0.50, best_val_macro_f1=0.79, swa_val_macro_f1=0.82)
    decision = registry.promote(second, "val_macro_f1")  # 0.79 < 0.80 on the best epochs, but those were not saved
    assert decision["metric"] == "swa_val_macro_f1" and decision["decision"] == "champion"
    third = registry.trained_version(0.50, best_val_macro_f1=0.81)  # no average: the best epochs compare
    decision = registry.promote(third, "val_macro_f1")
    assert decision["metric"] == "best_val_macro_f1" and decision["decision"] == "champion"


def test_a_version_that_cannot_be_compared_with_the_champion_stays_challenger(registry):
    first = registry.trained_version(0.70)  # a champion whose run has no val or leak-free figure
    registry.promote(first, "macro_f1")
    second = registry.trained_version(0.95, test_leak_free_macro_f1=0.9, best_val_macro_f1=0.9)
    decision = registry.promote(second, "leak_free_macro_f1")
    assert decision["decision"] == "challenger" and decision["metric"] is None
    assert registry.alias("champion") == "1" and registry.alias("challenger") == "2"


def test_every_promotion_metric_param_has_its_run_metrics():
    allowed = typing.get_args(typing.get_type_hints(EvaluateConfig)["promotion_metric"])
    assert set(allowed) == set(PROMOTION_KEYS)
    with pytest.raises(ConfigError, match=r"evaluate.promotion_metric = 'f1' is not allowed: expected one of "
                                          r"leak_free_macro_f1, leak_free_accuracy, macro_f1, accuracy, val_macro_f1"):
        params_from_dict({"evaluate": {"promotion_metric": "f1"}})
