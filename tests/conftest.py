"""Shared fixtures: a tiny synthetic dataset and tiny params (a few images, small size, one epoch, CPU)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from braintumor.cli import main
from braintumor.config import Params, params_from_dict
from braintumor.data.sample import write_sample_dataset
from braintumor.processes import BIN, venv_env  # noqa: F401  (BIN: the venv's bin, for the tests)

REPO = Path(__file__).resolve().parents[1]


def tiny_params_dict(data_root: str | Path, **overrides: dict) -> dict:
    """params.yaml's values with what makes runs seconds long: 32 px crops, one epoch on CPU, small batches."""
    raw = {
        "paths": {"data": str(data_root)},
        "model": {"weights": "none", "image_size": 32, "resize_size": 40},
        "train": {"device": "cpu", "epochs": 1, "batch_size": 8, "lr": 0.01, "threads": 2},
        "augment": {"preview_images_per_class": 1, "preview_views": 2},
        "evaluate": {"batch_size": 16},
        "report": {"sample_predictions": 4, "confident_mistakes": 2},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return raw


def tiny_params(data_root: str | Path, **overrides: dict) -> Params:
    return params_from_dict(tiny_params_dict(data_root, **overrides))


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory) -> Path:
    """A folder for one test module's shared files (a DVC project, an MLflow store, a server's artifacts), removed
    after the module's last test unless one of its tests failed: trained ResNet50 checkpoints are 100-300 MB each
    and a CI disk holds a few GB. (A passed test's own tmp_path goes at once: tmp_path_retention_policy.)"""
    path = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A read-only-by-convention tiny sample dataset: 6 Training and 3 Testing images per class, 64 px."""
    root = tmp_path_factory.mktemp("sample") / "data"
    write_sample_dataset(root, per_class=6, test_per_class=3, size=64, seed=1)
    return root


@pytest.fixture(scope="session")
def model_file(sample_root, tmp_path_factory) -> Path:
    """An untrained ResNet50 model file at the tiny params' size: predicting needs a model, not a good one."""
    import torch

    from braintumor.model import build_model, save_model
    from braintumor.transforms import Preprocessing

    params = tiny_params(sample_root)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, build_model("none", len(params.data.classes)), classes=params.data.classes,
               preprocessing=Preprocessing.from_config(params.model, params.preprocess), params=params.to_dict(),
               metrics={})
    return path


@pytest.fixture(scope="session")
def novelty_model_file(sample_root, tmp_path_factory):
    """(path, Novelty): the untrained model of `model_file` with a novelty score fitted on the sample's Training
    scans, its threshold at their median: about half of the scans like them are flagged `unlike_training`."""
    import torch

    from braintumor.inference import forward_outputs
    from braintumor.model import build_model, save_model
    from braintumor.novelty import fit_novelty
    from braintumor.serving import Predictor
    from braintumor.transforms import Preprocessing

    params = tiny_params(sample_root)
    classes = list(params.data.classes)
    torch.manual_seed(0)
    net = build_model("none", len(classes)).eval()
    path = tmp_path_factory.mktemp("novelty-model") / "model.pt"
    prep = Preprocessing.from_config(params.model, params.preprocess)
    save_model(path, net, classes=classes, preprocessing=prep, params=params.to_dict(), metrics={})
    predictor = Predictor(path)
    files = sorted((sample_root / "Training").rglob("*.jpg"))
    images = torch.from_numpy(np.stack([predictor.load_image(p) for p in files]))[:, None]
    labels = np.array([classes.index(p.parent.name) for p in files])
    features = forward_outputs(net, [(images, torch.from_numpy(labels))], torch.device("cpu"), predictor.transform,
                               features=True).features
    novelty = fit_novelty(features, labels, features, quantile=0.5)
    save_model(path, net, classes=classes, preprocessing=prep, params=params.to_dict(), metrics={},
               novelty=novelty.to_dict())
    return path, novelty


@pytest.fixture
def dataset_copy(sample_root, tmp_path) -> Path:
    """A private copy of the sample dataset that a test may change."""
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    return root


def predict(capsys, *args: str) -> tuple[int, str, str]:
    """`braintumor predict ARGS` in this process: (exit status, stdout, stderr)."""
    try:
        main(["predict", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True,
        timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH; on failure, show its output."""
    result = subprocess.run(cmd, cwd=cwd, env=venv_env(env), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
