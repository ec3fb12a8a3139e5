"""The Dockerfile MLflow generates for the registered model carries the model, its code and pinned requirements.
(The 32-client / 20 s load test with --workers 2 and the prediction log is not here yet: not run before the stop.)

The model is the untrained `novelty_model_file` (conftest), registered through the train stage's own path
(`pipeline.log_served_model`), not trained again: what is measured is the server, not the model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO, run, tiny_params_dict

pytestmark = pytest.mark.slow

MODEL_URI = "models:/brain-tumor-classifier/1"
REGISTER = """
import shutil, sys, yaml
from braintumor.config import params_from_dict
from braintumor.pipeline import log_served_model
from braintumor.serving import Predictor
from braintumor.tracking import RunTracker
params = params_from_dict(yaml.safe_load(open("params.yaml")))
predictor = Predictor(params.paths.model)
tracker = RunTracker(params)
version = log_served_model(tracker, params, predictor.load_image(sys.argv[1]))
tracker.end()
print(f"registered {version} {tracker.run_id}")
"""


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


def test_mlflow_generate_dockerfile_carries_the_model_its_code_and_pinned_requirements(registered):
    root, env, _ = registered
    out = root / "docker"
    run([str(BIN / "mlflow"), "models", "generate-dockerfile", "-m", MODEL_URI, "-d", str(out)], cwd=root, env=env)
    dockerfile = (out / "Dockerfile").read_text()
    model = out / "model_dir"
    assert (model / "MLmodel").is_file() and list(model.rglob("model.pt"))
    assert (model / "code" / "braintumor" / "serving.py").is_file()  # the package travels as code_paths
    assert list(model.rglob("mlflow_model.py"))  # the models-from-code file
    requirements = (model / "requirements.txt").read_text().split()
    for package in ("mlflow", "torch", "torchvision", "pillow", "numpy", "pandas", "pydicom", "nibabel"):
        assert any(r.startswith(f"{package}==") for r in requirements), (package, requirements)
    assert "model_dir" in dockerfile and "ENTRYPOINT" in dockerfile
