"""The train stage under torchrun: DDP on CPU with the gloo backend and 2 processes."""

from __future__ import annotations

import sys

import pytest
import yaml
from helpers import REPO, run, tiny_params_dict
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_train_stage_under_torchrun_two_processes(sample_root, tmp_path):
    raw = tiny_params_dict(sample_root, train={"epochs": 2, "threads": 1})
    raw["paths"].update(
        {
            k: str(tmp_path / v)
            for k, v in {
                "manifest": "splits.csv",
                "validation_report": "validation.json",
                "model": "model.pt",
                "train_metrics": "train.json",
                "train_plots": "plots",
                "run_info": "run.json",
                "cache": "cache",
            }.items()
        }
    )
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    run(
        [
            str(REPO / ".venv/bin/braintumor") if (REPO / ".venv/bin/braintumor").exists() else "braintumor",
            "validate",
            "--params",
            str(params_file),
        ],
        cwd=tmp_path,
        env=env,
    )

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = run(torchrun + [str(REPO / "stages/train.py"), "--params", str(params_file)], cwd=tmp_path, env=env)

    assert "DistributedDataParallel over 2 processes (gloo)" in result.stdout
    assert result.stdout.count("epoch 2/2") == 1  # only rank 0 reports
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "train.json").is_file()
    history = (tmp_path / "plots" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("brain-tumor-mri").experiment_id])
    assert len(runs) == 1  # rank 0 alone logs
    assert len(client.get_metric_history(runs[0].info.run_id, "val_accuracy")) == 2
