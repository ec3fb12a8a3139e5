"""Where a run comes from: the git commit, the DVC hashes of its data, and a run name that says what the run is.

Read from git and DVC's own files; no MLflow here (tracking.py puts these facts on the MLflow run).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import yaml

from braintumor.config import Params, load_params
from braintumor.errors import ConfigError

DATA_SPLITS = ("Training", "Testing")
MAX_RUN_NAME = 120


def git(*args: str) -> str:
    """The output of a git command in the current folder, or "" where git or the repository is missing."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_dirty() -> bool:
    """Tracked files with uncommitted changes (untracked ones, e.g. pipeline outputs, do not count)."""
    return bool(git("status", "--porcelain", "--untracked-files=no"))


def dvc_data_hashes(data_dir: str) -> dict[str, str]:
    """DVC's hash of each dataset folder ({"Training": "<md5>.dir", ...}): from `data/<split>.dvc` when the data
    is `dvc add`-ed, else from the validate stage's deps in dvc.lock; {} when DVC knows neither."""
    hashes = {}
    for split in DATA_SPLITS:
        dvc_file = Path(data_dir) / f"{split}.dvc"
        if dvc_file.is_file():
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [{}])
            hashes[split] = outs[0].get("md5", "")
    if not hashes and Path("dvc.lock").is_file():
        stage = (yaml.safe_load(Path("dvc.lock").read_text()) or {}).get("stages", {}).get("validate", {})
        for dep in stage.get("deps", []):
            name = Path(dep.get("path", "")).name
            if name in DATA_SPLITS:
                hashes[name] = dep.get("md5", "")
    return {split: value for split, value in hashes.items() if value}


def dvc_data_hash(data_dir: str) -> str:
    """One string for both folders, e.g. `Testing:<md5>.dir,Training:<md5>.dir` (the run's `data_dvc_hash` tag)."""
    return ",".join(f"{k}:{v}" for k, v in sorted(dvc_data_hashes(data_dir).items())) or "untracked"


def run_name(params: Params, params_file: str = "params.yaml") -> str:
    """What the run is: the DVC experiment's name under `dvc exp run`; else the params that differ from the
    committed params.yaml (`train.lr=0.003, train.epochs=15`); else `params.yaml @ <short commit>`."""
    experiment = os.environ.get("DVC_EXP_NAME")
    if experiment:
        return experiment
    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return f"{params_file} (not in git)"
    changed = changed_params(params, git("show", f"HEAD:./{params_file}"))
    if changed:
        name = ", ".join(changed)
        return name if len(name) <= MAX_RUN_NAME else name[: MAX_RUN_NAME - 1] + "…"
    return f"{params_file} @ {commit}" + ("-dirty" if git_dirty() else "")


def changed_params(params: Params, committed_yaml: str) -> list[str]:
    """`key=value` for every param whose value differs from the committed file's (same loader and defaults, so
    a key only spelled out in one of them is no difference); [] when there is no committed file to read."""
    if not committed_yaml:
        return []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "params.yaml"
        path.write_text(committed_yaml, encoding="utf-8")
        try:
            committed = load_params(path).flat()
        except ConfigError:  # committed with keys this version no longer knows: nothing to compare with
            return []
    return [f"{key}={value}" for key, value in sorted(params.flat().items()) if committed.get(key) != value]
