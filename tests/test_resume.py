"""`kill -9` during the train stage, then rerun: training resumes from the last checkpoint, in the same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from helpers import BIN, REPO, run, tiny_params_dict
from mlflow.tracking import MlflowClient

from braintumor.processes import venv_env

pytestmark = pytest.mark.slow


def test_kill_9_during_training_then_rerun_resumes(sample_root, tmp_path):
    raw = tiny_params_dict(sample_root, train={"epochs": 4})
    raw["paths"].update(
        {
            "manifest": str(tmp_path / "splits.csv"),
            "cache": str(tmp_path / "cache"),
            "validation_report": str(tmp_path / "validation.json"),
        }
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    run([str(BIN / "braintumor"), "validate"], cwd=tmp_path, env=env)

    stage = subprocess.Popen(
        [sys.executable, str(REPO / "stages/train.py")],
        cwd=tmp_path,
        env=venv_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoints = tmp_path / "cache" / "checkpoints"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and stage.poll() is None:
            found = list(checkpoints.glob("train-*.pt")) if checkpoints.is_dir() else []
            if found and torch.load(found[0], weights_only=True)["epoch"] >= 2:
                break
            time.sleep(0.2)
        assert stage.poll() is None, "training finished before it could be killed"
        os.kill(stage.pid, signal.SIGKILL)
    finally:
        stage.kill()
        stage.wait()
    assert not (tmp_path / "models" / "model.pt").exists()  # no half-written model
    killed_at = torch.load(found[0], weights_only=True)["epoch"]

    rerun = run([sys.executable, str(REPO / "stages/train.py")], cwd=tmp_path, env=env)
    assert "resuming from " in rerun.stdout and f"{found[0].name} after epoch {killed_at}" in rerun.stdout
    assert "epoch 1/4" not in rerun.stdout  # finished epochs are not trained again
    assert (tmp_path / "models" / "model.pt").is_file()
    assert not list(checkpoints.glob("train-*.pt"))  # a finished run leaves no checkpoint behind

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("brain-tumor-mri").experiment_id])
    assert len(runs) == 1  # the resumed training logs into the run it started
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_accuracy")]
    assert steps == [1, 2, 3, 4]
