"""A throwaway DVC project for end-to-end tests: a git repository with the pipeline's files, the tiny sample and tiny
params; commands run in it with the venv's tools and nothing pointing MLflow, DVC or git elsewhere."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from helpers import REPO, THREADS, tiny_params_dict

from braintumor.processes import venv_env

EXPERIMENT = "brain-tumor-mri"


def env() -> dict[str, str]:
    """The caller's environment without anything that would point MLflow, DVC or git elsewhere."""
    drop = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("DVC_")}
    env.update(
        PATH=venv_env()["PATH"],
        DVC_NO_ANALYTICS="1",
        OMP_NUM_THREADS=str(THREADS),
        MPLBACKEND="Agg",
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1",
    )  # tiny runs are shorter than 10 s
    return env


def sh(repo: Path, *cmd: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(cmd), check=False, cwd=repo, env=env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def out(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def ran(text: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran (or, with --dry, would run)."""
    return set(re.findall(r"Running stage '([\w-]+)'", text))


def changed(repo: Path) -> set[str]:
    """The stages `dvc status` flags (their own deps, params or outs changed), .dvc files left out."""
    return {k for k in json.loads(sh(repo, "dvc", "status", "--json").stdout) if not k.endswith(".dvc")}


def set_param(repo: Path, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    section, name = key.split(".")
    params[section][name] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def mlflow_client(repo: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs_of(repo: Path) -> list:
    client = mlflow_client(repo)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def make_project(root: Path, source: Path = REPO, *, deterministic: bool = False) -> Path:
    """A git repository with what the pipeline needs, the tiny sample in data/ and tiny params, committed.
    `source`: the tree whose pipeline files, stages and src/ it copies (another revision's, for a comparison);
    `deterministic`: train.deterministic, so that two runs write the same weights and metrics."""
    repo = root.resolve() / "repo"  # resolved, as the pipeline resolves its root (fileio.project_root)
    repo.mkdir(parents=True)
    for name in (
        "dvc.yaml",
        "params.yaml",
        ".dvcignore",
        ".gitignore",
        "data/.gitignore",
        "data/README.md",
        ".dvc/config",
        ".dvc/plots/roc_per_class.json",
    ):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, repo / name)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(source / "stages", repo / "stages", ignore=skip)
    shutil.copytree(source / "src", repo / "src", ignore=skip)
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "config", "user.email", "test@example.invalid")
    sh(repo, "git", "config", "user.name", "test")
    sh(repo, "git", "config", "commit.gpgsign", "false")
    sh(repo, "braintumor", "sample-data", "data", "--per-class", "6", "--test-per-class", "3", "--size", "64")

    params = yaml.safe_load((repo / "params.yaml").read_text())  # the project's file, tiny values
    for section, values in tiny_params_dict("data", train={"epochs": 1, "deterministic": deterministic}).items():
        assert set(values) <= set(params[section]), f"tiny params name keys params.yaml lacks: {values}"
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-q", "-m", "project with the tiny sample")
    return repo


def reset(repo: Path) -> None:
    """Back to the committed params and lock file, and the outputs they name (all in the DVC cache)."""
    sh(repo, "git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock")
    sh(repo, "dvc", "checkout", "--force")
    assert changed(repo) == set()
