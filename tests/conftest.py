"""Shared fixtures: a tiny synthetic dataset and tiny params (a few images, small size, one epoch, CPU)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REGISTER, REPO, THREADS, run, tiny_params, tiny_params_dict

from braintumor.data.sample import write_sample_dataset

if "PYTEST_XDIST_WORKER" in os.environ:  # a worker's share of the cores, set before any test module imports torch
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


def _set_tracking_uri() -> str | None:
    """The URI mlflow.set_tracking_uri last set in this process (None: never, or reset), read without importing
    MLflow. Its module global, since a URI set while MLFLOW_TRACKING_URI was patched outlives the patch."""
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    return getattr(utils, "_tracking_uri", None)


def _tracking_uri_kept():
    """Whatever a test (or a module's fixtures) sets with mlflow.set_tracking_uri, or MLFLOW_TRACKING_URI, is undone
    after it: the next test starts on the tracking URI it had before (a module fixture's, or the session's)."""
    before_env, before_set = os.environ.get("MLFLOW_TRACKING_URI"), _set_tracking_uri()
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(before_set)  # None: MLflow's own default again (and its env var unset)
    if before_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before_env


tracking_uri_kept = pytest.fixture(autouse=True)(_tracking_uri_kept)
tracking_uri_kept_for_module = pytest.fixture(scope="module", autouse=True)(_tracking_uri_kept)


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

    from braintumor.model.network import build_model, save_model
    from braintumor.model.transforms import Preprocessing

    params = tiny_params(sample_root)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(
        path,
        build_model("none", len(params.data.classes)),
        classes=params.data.classes,
        preprocessing=Preprocessing.from_config(params.model, params.preprocess),
        params=params.to_dict(),
        metrics={},
    )
    return path


@pytest.fixture(scope="session")
def novelty_model_file(sample_root, tmp_path_factory):
    """(path, Novelty): the untrained model of `model_file` with a novelty score fitted on the sample's Training
    scans, its threshold at their median: about half of the scans like them are flagged `unlike_training`."""
    import torch

    from braintumor.model.inference import forward_outputs
    from braintumor.model.network import build_model, save_model
    from braintumor.model.novelty import fit_novelty
    from braintumor.model.predictor import Predictor
    from braintumor.model.transforms import Preprocessing

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
    features = forward_outputs(
        net, [(images, torch.from_numpy(labels))], torch.device("cpu"), predictor.transform, features=True
    ).features
    novelty = fit_novelty(features, labels, features, quantile=0.5)
    save_model(
        path, net, classes=classes, preprocessing=prep, params=params.to_dict(), metrics={}, novelty=novelty.to_dict()
    )
    return path, novelty


@pytest.fixture
def dataset_copy(sample_root, tmp_path) -> Path:
    """A private copy of the sample dataset that a test may change."""
    root = tmp_path / "data"
    shutil.copytree(sample_root, root)
    return root


@pytest.fixture(scope="module")
def registered(module_dir, sample_root, novelty_model_file):
    """(folder, env, run id): the novelty model registered as brain-tumor-classifier version 1 in a store there."""
    model, _ = novelty_model_file
    (module_dir / "models").mkdir()
    (module_dir / "models" / "model.pt").write_bytes(Path(model).read_bytes())
    (module_dir / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(sample_root)))
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{module_dir / 'mlflow.db'}", "PYTHONPATH": str(REPO / "src")}
    scan = next((sample_root / "Testing").rglob("*.jpg"))
    out = run([sys.executable, "-c", REGISTER, str(scan)], cwd=module_dir, env=env).stdout
    version, run_id = out.strip().splitlines()[-1].split()[1:]
    assert version == "1"
    return module_dir, env, run_id
