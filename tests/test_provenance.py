"""Run names say what a run is, and the DVC hashes of the data are read from DVC's own files."""

from __future__ import annotations

import pytest
import yaml
from helpers import run, tiny_params_dict

from braintumor.config import load_params
from braintumor.tracking.provenance import dvc_data_hash, dvc_data_hashes, run_name


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git repository with a committed params.yaml; the current folder."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict("data")))
    run(["git", "init", "-q"], cwd=tmp_path)
    for key, value in (("user.email", "test@example.invalid"), ("user.name", "test"), ("commit.gpgsign", "false")):
        run(["git", "config", key, value], cwd=tmp_path)
    run(["git", "add", "params.yaml"], cwd=tmp_path)
    run(["git", "commit", "-q", "-m", "params"], cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def _short(repo) -> str:
    return run(["git", "rev-parse", "--short", "HEAD"], cwd=repo).stdout.strip()


def test_committed_params_name_the_run_after_the_commit(repo):
    assert run_name(load_params("params.yaml")) == f"params.yaml @ {_short(repo)}"


def test_uncommitted_code_changes_mark_the_name_dirty(repo):
    (repo / "train.py").write_text("print(1)\n")
    run(["git", "add", "train.py"], cwd=repo)
    run(["git", "commit", "-q", "-m", "code"], cwd=repo)
    (repo / "train.py").write_text("print(2)\n")
    assert run_name(load_params("params.yaml")) == f"params.yaml @ {_short(repo)}-dirty"


def test_edited_params_name_the_run_after_what_changed(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = 0.003
    params["model"]["dropout"] = 0.2
    params["evaluate"]["calibration_bins"] = 15  # spelled out, but the committed default: no difference
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert run_name(load_params("params.yaml")) == "model.dropout=0.2, train.lr=0.003"


def test_a_dvc_experiment_is_named_by_dvc(repo, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "eager-wits")
    assert run_name(load_params("params.yaml")) == "eager-wits"


def test_outside_git_the_name_says_so(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict("data")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    assert run_name(load_params("params.yaml")) == "params.yaml (not in git)"


def test_long_lists_of_changes_are_cut(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tracking"] = {"experiment": "x" * 200}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    name = run_name(load_params("params.yaml"))
    assert name.startswith("tracking.experiment=xxx") and name.endswith("…") and len(name) == 120


def test_data_hashes_from_dvc_files_then_dvc_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dvc_data_hashes("data") == {} and dvc_data_hash("data") == "untracked"
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "validate": {
                        "deps": [
                            {"path": "data/Training", "md5": "1" * 32 + ".dir"},
                            {"path": "data/Testing", "md5": "2" * 32 + ".dir"},
                            {"path": "stages/validate.py", "md5": "3" * 32},
                        ]
                    }
                },
            }
        )
    )
    assert dvc_data_hashes("data") == {"Training": "1" * 32 + ".dir", "Testing": "2" * 32 + ".dir"}
    (tmp_path / "data").mkdir()
    for split, digit in (("Training", "4"), ("Testing", "5")):  # `dvc add`-ed data wins over the lock file
        (tmp_path / f"data/{split}.dvc").write_text(
            yaml.safe_dump({"outs": [{"md5": digit * 32 + ".dir", "path": split}]})
        )
    assert dvc_data_hash("data") == f"Testing:{'5' * 32}.dir,Training:{'4' * 32}.dir"
