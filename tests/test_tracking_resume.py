"""A resumed MLflow run gets each epoch's metrics once: the checkpoint's epochs are replayed, logged ones skipped."""

import mlflow
from mlflow.tracking import MlflowClient

from braintumor.tracking import RunTracker
from braintumor.training import EpochStats
from conftest import tiny_params


def _stats(epoch: int) -> EpochStats:
    return EpochStats(epoch, 1.0, 0.5, 1.0, 0.5, 0.5 + epoch / 10, 1e-3, 10.0, 1.0)


def test_resumed_tracker_logs_only_the_epochs_the_run_lacks(sample_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = tiny_params(sample_root)
    first = RunTracker(params)
    first.log_epoch(_stats(1))
    mlflow.end_run("KILLED")  # killed after epoch 2's checkpoint, before its metrics

    resumed = RunTracker(params, resume_run_id=first.run_id)
    for epoch in (1, 2, 3):  # what fit replays from the checkpoint, then trains
        resumed.log_epoch(_stats(epoch))
    mlflow.end_run()

    history = MlflowClient().get_metric_history(first.run_id, "val_macro_f1")
    assert sorted(m.step for m in history) == [1, 2, 3]
