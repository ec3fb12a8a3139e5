"""RunTracker against a real store: a resumed run gets each epoch once; concurrent starts share the experiment."""

import mlflow
from helpers import tiny_params
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from braintumor.tracking.runs import RunTracker
from braintumor.training.loop import EpochStats


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


def test_a_run_that_loses_the_race_to_tag_the_experiment_still_starts(sample_root, tmp_path, monkeypatch):
    """Two runs starting at once (queued experiments): the other one tags the experiment first; this one's insert
    fails on the unique key, and it carries on with the experiment as it now is."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("brain-tumor-mri")  # made by an older version: no kind tag yet
    real = MlflowClient.set_experiment_tag

    def lose_the_race(self, exp_id, key, value):
        real(self, exp_id, key, value)  # the other process's insert
        raise MlflowException("UNIQUE constraint failed: experiment_tags.key, experiment_tags.experiment_id")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", lose_the_race)
    tracker = RunTracker(tiny_params(sample_root))
    mlflow.end_run()
    assert tracker.experiment_id == experiment_id
