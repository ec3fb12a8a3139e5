"""The served model as deployed: the container build context `make serve-image` writes (deploy/serve_image.py,
deploy/serve.Dockerfile), MLflow's generated model directory in it, and the Dockerfile's own CMD and ENV run on
this machine (no Docker daemon here: the image itself is not built) under 32 concurrent clients for 20 s with
--workers 2 and the prediction log on: no error, bounded memory, one whole JSON line per answer.

The model is the untrained `novelty_model_file` (conftest), registered through the train stage's own path
(`pipeline.log_served_model`), not trained again: what is measured is the server, not the model. The clients are
benchmarks/serve_load.py's own.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys

import pytest
from helpers import BIN, MODEL_URI, REPO, run

from braintumor.processes import free_port, start_process, stop_process, tree_rss_mb, venv_env, wait_http

pytestmark = pytest.mark.slow


def test_mlflow_generate_dockerfile_carries_the_model_its_code_and_pinned_requirements(registered):
    root, env, _ = registered
    out = root / "docker"
    run([str(BIN / "mlflow"), "models", "generate-dockerfile", "-m", MODEL_URI, "-d", str(out)], cwd=root, env=env)
    dockerfile = (out / "Dockerfile").read_text()
    model = out / "model_dir"
    assert (model / "MLmodel").is_file() and list(model.rglob("model.pt"))
    assert (model / "code" / "braintumor" / "serving" / "requests.py").is_file()  # the package travels as code_paths
    assert list(model.rglob("mlflow_model.py"))  # the models-from-code file
    requirements = (model / "requirements.txt").read_text().split()
    for package in ("mlflow", "torch", "torchvision", "pillow", "numpy", "pandas", "pydicom", "nibabel"):
        assert any(r.startswith(f"{package}==") for r in requirements), (package, requirements)
    assert "model_dir" in dockerfile and "ENTRYPOINT" in dockerfile


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def image_context(registered):
    """`make serve-image MODEL=models:/brain-tumor-classifier/1`'s script, into a folder of the module's."""
    root, env, _ = registered
    out = root / "serve-image"
    printed = run(
        [sys.executable, str(REPO / "deploy" / "serve_image.py"), "--model", MODEL_URI, "--out", str(out)],
        cwd=root,
        env=env,
    ).stdout
    assert f"docker build -t brain-tumor-classifier:1 {out}" in printed
    return out


def test_the_image_is_non_root_checks_its_health_and_logs_to_a_volume(image_context, registered):
    root, env, _ = registered
    steps = _instructions((image_context / "Dockerfile").read_text())
    kinds = [kind for kind, _ in steps]
    assert kinds[0] == "FROM" and "ENTRYPOINT" not in kinds
    users = [arguments for kind, arguments in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0") and kinds.index("USER") < kinds.index("CMD")
    health = next(arguments for kind, arguments in steps if kind == "HEALTHCHECK")
    assert "127.0.0.1:8080/ping" in health
    assert ("ARG", "MODEL_VERSION=1") in steps  # the registered version, for the log's `version`
    environment = dict(token.split("=", 1) for kind, a in steps if kind == "ENV" for token in shlex.split(a))
    assert environment["BRAINTUMOR_PREDICTION_LOG"] == "/var/log/braintumor/"
    # docs/serving.md#under-load's choice: one worker on every core, a timeout above a 64 x 16-scan queue
    defaults = environment["SERVE_WORKERS"], environment["SERVE_THREADS"], environment["SERVE_TIMEOUT"]
    assert defaults == ("1", "", "300")
    assert ("VOLUME", "/var/log/braintumor") in steps
    copied = [arguments.split() for kind, arguments in steps if kind == "COPY"]
    assert all((image_context / sources[0]).exists() for sources in copied)  # every COPY source is in the context
    assert (image_context / "model_dir" / "MLmodel").is_file() and (image_context / "Dockerfile.mlflow").is_file()
    # Written again over its own earlier output; a folder it did not write is refused, not deleted.
    stranger = root / "not-an-image"
    (stranger / "keep.txt").parent.mkdir()
    (stranger / "keep.txt").write_text("mine")
    script = [sys.executable, str(REPO / "deploy" / "serve_image.py"), "--model", MODEL_URI]
    failed = run([*script, "--out", str(stranger)], cwd=root, env=env, check=False)
    assert failed.returncode != 0 and "was not written by serve_image.py" in failed.stderr
    assert (stranger / "keep.txt").read_text() == "mine"
    missing = run(
        [*script, "--model", "models:/no-such-model@champion", "--out", str(root / "x")], cwd=root, env=env, check=False
    )
    assert missing.returncode != 0 and "`dvc repro` registers one" in missing.stderr
    run([*script, "--out", str(image_context)], cwd=root, env=env)


def test_the_images_command_serves_32_clients_with_two_workers_without_error_or_memory_growth(
    image_context, sample_root, tmp_path
):
    """The Dockerfile's CMD, with its ENV, run here: /opt/model is the context's model_dir, 8080 a free port,
    the log volume a folder of the test's."""
    steps = _instructions((image_context / "Dockerfile").read_text())
    environment = dict(token.split("=", 1) for kind, a in steps if kind == "ENV" for token in shlex.split(a))
    environment["BRAINTUMOR_MODEL_VERSION"] = "1"  # what ARG MODEL_VERSION=1 gives the ENV line in a build
    port, logs = free_port(), tmp_path / "volume"
    environment.update(SERVE_WORKERS="2", SERVE_THREADS="1", BRAINTUMOR_PREDICTION_LOG=f"{logs}/")
    command = json.loads(next(arguments for kind, arguments in steps if kind == "CMD"))
    shell = command[2].replace("/opt/model", str(image_context / "model_dir"))
    shell = shell.replace("-h 0.0.0.0 -p 8080", f"-h 127.0.0.1 -p {port}")
    assert str(port) in shell and str(image_context) in shell
    env = {key: value for key, value in venv_env().items() if key != "MLFLOW_TRACKING_URI"}  # no store, as in the image
    server_log = tmp_path / "server.log"
    proc = start_process([command[0], command[1], shell], server_log, env={**env, **environment})
    bench = _load_benchmark()
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, server_log, "the image's CMD", timeout=180)
        bodies = bench.request_bodies(sample_root, 1, 16)
        warm_up = [bench.run_cell(port, proc.pid, bodies, 2, 1, 120) for _ in range(4)]  # each worker's first
        start = tree_rss_mb(proc.pid)
        cell = bench.run_cell(port, proc.pid, bodies, 32, 20, 120)
    finally:
        stop_process(proc)
    assert cell["errors"] == 0 and not any(c["errors"] for c in warm_up), cell["error_kinds"]
    assert cell["requests"] > 32
    assert cell["rss_peak_mb"] - start <= 150, cell  # the bound: at most 150 MB over the run
    assert cell["rss_after_mb"] <= 1.1 * start, cell  # and back within 10% after it
    lines = (logs / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole: the two workers never interleaved one
    assert len(records) == cell["requests"] + sum(c["requests"] for c in warm_up)  # one picture per request
    assert {r["source"] for r in records} == {"serve"} and {r["version"] for r in records} == {"1"}
    assert len({r["run_id"] for r in records}) == 1 and records[0]["run_id"]
