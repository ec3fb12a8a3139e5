"""What tests share besides fixtures: the repository root, the venv's bin, tiny params, running the CLI and commands.

Tests import these with `from helpers import ...` (tests/ is on pytest's `pythonpath`), never from conftest."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from braintumor.cli import main
from braintumor.config import Params, params_from_dict
from braintumor.processes import BIN, venv_env

__all__ = ["BIN", "MODEL_URI", "REGISTER", "REPO", "THREADS", "predict", "run", "tiny_params", "tiny_params_dict"]

REPO = Path(__file__).resolve().parents[1]
# `make test` runs pytest-xdist workers (one test file each at a time): the cores are shared out among them, so that
# each worker's torch, and every process a test starts, uses its share and two workers never fight over a core
# (conftest.py sets OMP_NUM_THREADS to it before torch is imported). Alone, a test gets every core.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
# The served-model tests' registered version (conftest's `registered`) and the script that registers it through the
# train stage's own path (pipeline.log_served_model).
MODEL_URI = "models:/brain-tumor-classifier/1"
REGISTER = """
import shutil, sys, yaml
from braintumor.config import params_from_dict
from braintumor.pipeline import log_served_model
from braintumor.model.predictor import Predictor
from braintumor.tracking.runs import RunTracker
params = params_from_dict(yaml.safe_load(open("params.yaml")))
predictor = Predictor(params.paths.model)
tracker = RunTracker(params)
version = log_served_model(tracker, params, predictor.load_image(sys.argv[1]))
tracker.end()
print(f"registered {version} {tracker.run_id}")
"""


def tiny_params_dict(data_root: str | Path, **overrides: dict) -> dict:
    """params.yaml's values with what makes runs seconds long: 32 px crops, one epoch on CPU, small batches."""
    raw = {
        "paths": {"data": str(data_root)},
        "model": {"weights": "none", "image_size": 32, "resize_size": 40},
        "train": {"device": "cpu", "epochs": 1, "batch_size": 8, "lr": 0.01, "threads": THREADS},
        "augment": {"preview_images_per_class": 1, "preview_views": 2},
        "evaluate": {"batch_size": 16},
        "report": {"sample_predictions": 4, "confident_mistakes": 2},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return raw


def tiny_params(data_root: str | Path, **overrides: dict) -> Params:
    return params_from_dict(tiny_params_dict(data_root, **overrides))


def predict(capsys, *args: str) -> tuple[int, str, str]:
    """`braintumor predict ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        main(["predict", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run(
    cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH; on failure, show its output."""
    result = subprocess.run(cmd, cwd=cwd, env=venv_env(env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
