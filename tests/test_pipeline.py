"""The DVC pipeline end to end, in a throwaway git repository holding a copy of the project and the tiny sample.

One `dvc repro` (module-scoped fixture) is shared by the tests below; each later rerun is as small as possible:
`dvc status` / `dvc repro --dry` where they tell which stages a change reaches, real runs only for the
experiments (`dvc exp run`, also the proof that a train.* change reruns train, evaluate and report only).
MLflow is the default store, `mlflow.db` at the repository root: MLFLOW_TRACKING_URI is kept out of every
subprocess. The tests share one repository through fixtures: `project` (the first repro), `workspace_experiment`
(an exp run in the workspace, then reset) and `temp_experiment` (the dataset DVC-tracked, then an exp run --temp,
after workspace_experiment). A test that changes the repository puts it back before it ends, and one that needs
an experiment asks for its fixture, so each test also runs alone (`pytest tests/test_pipeline.py -k exp_show` runs
the repro and the two experiments it compares).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dvc_projects import (
    changed,
    file_hashes,
    make_project,
    mlflow_client,
    out,
    ran,
    reset,
    runs_of,
    set_param,
    sh,
)
from dvc_projects import (
    env as _env,
)
from helpers import REPO

STAGES = ["validate", "augment_preview", "train", "evaluate", "report"]
OUTPUTS = [
    "manifests/splits.csv",
    "reports/validation.json",
    "reports/augment_preview.png",
    "models/model.pt",
    "metrics/train.json",
    "plots/train/history.csv",
    "reports/mlflow_run.json",
    "metrics/eval.json",
    "plots/eval/confusion.csv",
    "plots/eval/roc.csv",
    "plots/eval/reliability.csv",
    "plots/eval/predictions.csv",
    "reports/model_card.md",
    "reports/report.html",
]
REGISTERED = "brain-tumor-classifier"


@pytest.fixture(scope="module")
def project(module_dir) -> dict:
    """The project after one full `dvc repro`: repo path, the repro's output, and the MLflow runs right after."""
    repo = make_project(module_dir / "pipeline", deterministic=True)  # test_outputs_are_those_of_the_flat_layout
    # Every Python process lists what it imports on stderr (-X importtime), one stream with dvc's own output,
    # so each stage's imports follow its "Running stage" line (test_each_stage_declares_every_module_it_imports).
    first = subprocess.run(
        ["dvc", "repro"],
        cwd=repo,
        env={**_env(), "PYTHONPROFILEIMPORTTIME": "1"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
        check=False,
    )
    assert first.returncode == 0, first.stdout[-20000:]
    sh(repo, "git", "commit", "-q", "-m", "pipeline outputs")  # dvc.lock (autostaged, core.autostage)
    return {"repo": repo, "repro": first.stdout, "runs": [r.info.run_id for r in runs_of(repo)]}


# ---- 1. one full run ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_repro_runs_every_stage_and_writes_every_output(project):
    repo = project["repo"]
    assert ran(project["repro"]) == set(STAGES)
    order = [m.group(1) for m in re.finditer(r"Running stage '([\w-]+)'", project["repro"])]
    assert order.index("validate") < order.index("train") < order.index("evaluate") < order.index("report")
    missing = [p for p in OUTPUTS if not (repo / p).is_file() or (repo / p).stat().st_size == 0]
    assert not missing, f"declared outputs missing or empty: {missing}"
    assert (repo / "mlflow.db").is_file() and not (repo / "mlruns").exists()
    assert "<html" in (repo / "reports/report.html").read_text()[:2000].lower()
    history = (repo / "plots/train/history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and len(history) == 2  # header + 1 epoch
    eval_metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert {"accuracy", "macro_f1", "leak_free"} <= set(eval_metrics)
    from braintumor.evaluation.results import Evaluation

    assert Evaluation.from_dict(eval_metrics).to_dict() == eval_metrics  # the report reads back what evaluate wrote


@pytest.mark.slow
def test_mlflow_run_in_repository_store(project):
    repo = project["repo"]
    assert len(project["runs"]) == 1, "one pipeline run = one MLflow run"
    run_id = project["runs"][0]
    info = json.loads((repo / "reports/mlflow_run.json").read_text())
    assert info["run_id"] == run_id
    client = mlflow_client(repo)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(repo / "mlartifacts")

    params = run.data.params
    assert params["train.lr"] == "0.01" and params["train.epochs"] == "1" and params["model.image_size"] == "32"
    assert params["paths.data"] == "data" and params["tracking.registered_model"] == REGISTERED

    history = client.get_metric_history(run_id, "val_accuracy")
    epochs = [int(line.split(",")[0]) for line in (repo / "plots/train/history.csv").read_text().splitlines()[1:]]
    assert sorted(m.step for m in history) == epochs == [1]
    metrics = run.data.metrics
    for name in ("test_accuracy", "test_macro_f1", "test_leak_free_accuracy", "best_val_macro_f1"):
        assert name in metrics, f"{name} not logged: {sorted(metrics)}"
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(evaluation["accuracy"])
    assert metrics["test_macro_f1"] == pytest.approx(evaluation["macro_f1"])

    report = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/augment_preview.png"} <= report
    assert any(a.path == "evaluation" for a in client.list_artifacts(run_id))

    tags = run.data.tags
    assert tags["git_commit"] == sh(repo, "git", "rev-parse", "HEAD~1").stdout.strip()  # the commit it ran on
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["validate"]["deps"]
    data_md5 = {Path(d["path"]).name: d["md5"] for d in lock if d["path"] in ("data/Training", "data/Testing")}
    assert tags["data_dvc_hash"] == f"Testing:{data_md5['Testing']},Training:{data_md5['Training']}"
    assert tags["device"] == "cpu"
    assert run.info.run_name == f"params.yaml @ {tags['git_commit'][:7]}"
    digests = {i.dataset.name.split("-")[0]: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert digests == {"train": data_md5["Training"], "val": data_md5["Training"], "test": data_md5["Testing"]}
    assert "system/cpu_utilization_percentage" in metrics

    champion = client.get_model_version_by_alias(REGISTERED, "champion")
    assert champion.run_id == run_id and str(champion.version) == str(info["model_version"])


@pytest.mark.slow
def test_report_is_self_contained_and_every_image_decodes(project, tmp_path):
    import base64
    import io

    from PIL import Image

    page = (project["repo"] / "reports/report.html").read_text(encoding="utf-8")
    for section in (
        "Dataset and validation",
        "Preprocessing and augmentation",
        "Training curves",
        "Test metrics",
        "leak-free",
        "Testing by image size",
        "Confusion matrix",
        "Calibration",
        "Sample test predictions",
        "Most confident mistakes",
        "Grad-CAM",
        "Model card",
        "Run metadata",
        "mlflow ui",
    ):
        assert section in page, f"report lacks {section!r}"
    assert '<a href="model_card.md">' in page and (project["repo"] / "reports/model_card.md").is_file()
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not load anything from the network"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 8
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.load()  # decodes completely
            assert image.size[0] > 50 and image.size[1] > 50

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium and os.environ.get("CI") == "true":  # .ci/run installs it: its absence there is a failure
        pytest.fail("CI=true but Chromium is not installed (apt-get install -y chromium): the report is not rendered")
    if chromium:  # render it as a reader would, offline (Debian's chromium; skipped with a warning where absent)
        shot = tmp_path / "report.png"
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1280,4000",
                f"--screenshot={shot}",
                (project["repo"] / "reports/report.html").as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )
        with Image.open(shot) as rendered:
            pixels = rendered.convert("L").resize((64, 200))
            assert len(set(pixels.getdata())) > 20  # not a blank page
    else:
        warnings.warn("Chromium is not installed (apt-get install -y chromium): the report was not rendered")


@pytest.mark.slow
def test_each_stage_declares_every_module_it_imports(project):
    """A change to any module a stage runs reruns that stage: its deps in dvc.yaml name every braintumor module
    the stage imported in the real run above (and only files that exist)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    parts = re.split(r"Running stage '([\w-]+)'", project["repro"])
    imported = {
        name: set(re.findall(r"import time:.*\|\s*(braintumor(?:\.\w+)*)\s*$", text, re.MULTILINE))
        for name, text in zip(parts[1::2], parts[2::2])
    }
    assert set(imported) == set(STAGES)
    undeclared = {}
    for name, modules in imported.items():
        assert "braintumor.cli" in modules, f"no import list for stage {name}: is -X importtime working?"
        files = set()
        for module in modules:
            path = Path("src", *module.split("."))
            files.add(str(path / "__init__.py") if (REPO / path).is_dir() else f"{path}.py")
        deps = {d for d in stages[name]["deps"] if not d.startswith("$")}
        assert all((REPO / d).exists() for d in deps), f"stage {name} declares missing files"
        if files - deps:
            undeclared[name] = sorted(files - deps)
    assert not undeclared, f"dvc.yaml stages import modules their deps do not name: {undeclared}"


# ---- 2. nothing changed, nothing runs -------------------------------------------------------------------------


@pytest.mark.slow
def test_second_repro_runs_nothing(project):
    repo = project["repo"]
    result = out(sh(repo, "dvc", "repro"))
    assert ran(result) == set()
    assert all(f"Stage '{s}' didn't change, skipping" in result for s in STAGES), result
    assert "Data and pipelines are up to date." in out(sh(repo, "dvc", "status"))


# ---- 3. a change reruns what it reaches, and nothing else -----------------------------------------------------
# `dvc status` names the stages a change reaches directly; `dvc repro --dry --force-downstream` adds what runs
# after them (their outputs change). The real rerun of a train.* change is test_exp_run_in_workspace below.


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, value, direct, reruns",
    [
        ("train.lr", 0.02, {"train"}, {"train", "evaluate", "report"}),
        ("augment.preview_seed", 1, {"augment_preview"}, {"augment_preview", "report"}),
        (
            "augment.rotation_degrees",
            5,
            {"augment_preview", "train"},
            {"augment_preview", "train", "evaluate", "report"},
        ),
    ],
)
def test_param_change_reaches_only_its_stages(project, key, value, direct, reruns):
    repo = project["repo"]
    original = (repo / "params.yaml").read_text()
    try:
        set_param(repo, key, value)
        assert changed(repo) == direct
        assert ran(out(sh(repo, "dvc", "repro", "--dry"))) == direct
        assert ran(out(sh(repo, "dvc", "repro", "--dry", "--force-downstream"))) == reruns
    finally:
        (repo / "params.yaml").write_text(original)
    assert changed(repo) == set()


@pytest.mark.slow
def test_changed_image_reruns_from_validate(project):
    repo = project["repo"]
    target = min((repo / "data/Training/glioma_tumor").glob("*.jpg"))
    other = min((repo / "data/Training/meningioma_tumor").glob("*.jpg"))
    original = target.read_bytes()
    try:
        shutil.copyfile(other, target)
        status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
        assert {"changed deps": {"data/Training": "modified"}} in status["validate"]
        assert changed(repo) == {"validate", "augment_preview", "train"}  # the stages that read data/Training
        assert ran(out(sh(repo, "dvc", "repro", "--dry", "--force-downstream"))) == set(STAGES)
    finally:
        target.write_bytes(original)
    assert changed(repo) == set()


# ---- 4. experiments -------------------------------------------------------------------------------------------


def _exp_name(text: str) -> str:
    found = re.search(r"Ran experiment\(s\): ([\w-]+)", text)
    assert found, text
    return found.group(1)


@pytest.fixture(scope="module")
def workspace_experiment(project) -> dict:
    """`dvc exp run -S train.epochs=2` in the workspace, then the committed state restored from the DVC cache:
    its output, its name, the MLflow runs before it and the run it wrote to reports/mlflow_run.json."""
    repo = project["repo"]
    before = {r.info.run_id for r in runs_of(repo)}
    result = out(sh(repo, "dvc", "exp", "run", "-S", "train.epochs=2"))
    run_info = json.loads((repo / "reports/mlflow_run.json").read_text())
    reset(repo)
    return {"result": result, "name": _exp_name(result), "before": before, "run_info": run_info}


@pytest.fixture(scope="module")
def temp_experiment(project, workspace_experiment) -> dict:
    """The dataset `dvc add`-ed and committed (a --temp copy is made from git), then
    `dvc exp run --temp -S train.lr=0.005`. After workspace_experiment, so each test sees one order of events."""
    repo = project["repo"]
    sh(repo, "dvc", "add", "data/Training", "data/Testing")
    sh(repo, "git", "add", "data/Training.dvc", "data/Testing.dvc", "data/.gitignore")
    sh(repo, "git", "commit", "-q", "-m", "track the dataset with DVC")
    stale_after_add = changed(repo)
    before = {r.info.run_id for r in runs_of(repo)}
    cached = sorted(p.name for p in (repo / ".cache/images").glob("*.npy"))
    result = out(sh(repo, "dvc", "exp", "run", "--temp", "-S", "train.lr=0.005"))
    return {
        "result": result,
        "name": _exp_name(result),
        "before": before,
        "cached": cached,
        "stale_after_add": stale_after_add,
    }


@pytest.mark.slow
def test_exp_run_in_workspace(project, workspace_experiment):
    """A real rerun: a train.* change runs train, evaluate and report, not validate or augment_preview."""
    repo, result, name = project["repo"], workspace_experiment["result"], workspace_experiment["name"]
    assert ran(result) == {"train", "evaluate", "report"}
    assert "Stage 'validate' didn't change, skipping" in result
    assert "Stage 'augment_preview' didn't change, skipping" in result

    new = [r for r in runs_of(repo) if r.info.run_id not in workspace_experiment["before"]]
    assert len(new) == 1
    run = new[0]
    assert run.info.run_name == name and run.data.tags["dvc_exp_name"] == name
    assert run.data.params["train.epochs"] == "2"
    history = mlflow_client(repo).get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert workspace_experiment["run_info"]["run_id"] == run.info.run_id
    # every output is in the DVC cache: the committed state came back whole
    assert json.loads((repo / "reports/mlflow_run.json").read_text())["run_id"] == project["runs"][0]


@pytest.mark.slow
def test_exp_run_temp_logs_to_repository_store(project, temp_experiment):
    """--temp runs in a copy under .dvc/tmp/exps/: the copy's MLflow runs and decoded scans are the repository's.
    The copy is made from git, so the dataset must be DVC-tracked (as data/README.md says it is)."""
    repo, result, name = project["repo"], temp_experiment["result"], temp_experiment["name"]
    assert temp_experiment["stale_after_add"] == set()  # same content hashes: nothing to rerun
    assert temp_experiment["cached"], "the first run decoded the scans into .cache/images"
    assert ran(result) == {"train", "evaluate", "report"}  # validate's outputs came from the DVC cache
    assert "decoding scans" not in result, "the copy decoded the scans again instead of using the repository's cache"
    assert sorted(p.name for p in (repo / ".cache/images").glob("*.npy")) == temp_experiment["cached"]

    new = [r for r in runs_of(repo) if r.info.run_id not in temp_experiment["before"]]
    assert len(new) == 1, "the --temp run is not in the repository's mlflow.db"
    run = new[0]
    assert run.info.run_name == name and run.data.params["train.lr"] == "0.005"
    assert run.data.tags["git_commit"] == sh(repo, "git", "rev-parse", "HEAD").stdout.strip()
    assert run.data.tags["data_dvc_hash"].startswith("Testing:") and "Training:" in run.data.tags["data_dvc_hash"]
    assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(repo / "mlartifacts")
    assert "test_macro_f1" in run.data.metrics
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == 0.01  # workspace untouched
    assert changed(repo) == set()


@pytest.mark.slow
def test_exp_show_metrics_and_plots_diff(project, workspace_experiment, temp_experiment, tmp_path):
    repo = project["repo"]
    names = [workspace_experiment["name"], temp_experiment["name"]]

    shown = json.loads(sh(repo, "dvc", "exp", "show", "--json", "--all-commits").stdout)
    revs = {r["name"]: r for commit in shown for e in commit.get("experiments") or [] for r in e["revs"]}
    for name in names:  # metrics of each experiment are readable (they are cached outputs, not git files)
        metrics = (revs[name].get("data") or {}).get("metrics", {})
        assert "accuracy" in metrics.get("metrics/eval.json", {}).get("data", {}), (name, metrics)
        assert "best_val_macro_f1" in metrics.get("metrics/train.json", {}).get("data", {}), (name, metrics)
    table = out(sh(repo, "dvc", "exp", "show", "--md", "--no-pager", "--all-commits"))
    assert all(n in table for n in names) and "train.lr" in table

    diff = out(sh(repo, "dvc", "metrics", "diff", "--all", "HEAD", names[0]))
    assert "metrics/eval.json" in diff and "macro_f1" in diff and "best_val_accuracy" in diff
    params = out(sh(repo, "dvc", "params", "diff", "HEAD", names[0]))
    assert "train.epochs" in params

    plots = json.loads(sh(repo, "dvc", "plots", "diff", "--json", "HEAD", names[1]).stdout)
    assert not plots.get("errors"), plots.get("errors")
    titles = set(plots["data"])
    assert {"Loss", "Accuracy", "Confusion matrix (Testing)", "ROC (one class vs rest)", "Reliability"} <= titles
    assert not {t for t in titles if t.startswith("plots/")}, f"files drawn with the default template: {titles}"
    loss = plots["data"]["Loss"][0]
    assert len(loss["revisions"]) == 2 and loss["content"]["data"]["values"]
    html = out(sh(repo, "dvc", "plots", "show", "-o", str(tmp_path / "plots")))
    assert (tmp_path / "plots/index.html").is_file(), html


# ---- 5. dataset versioning (its own repository) ---------------------------------------------------------------


@pytest.mark.slow
def test_dataset_add_push_pull_roundtrip(tmp_path):
    repo = make_project(tmp_path)
    assert sh(repo, "git", "ls-files", "data").stdout.split() == ["data/.gitignore", "data/README.md"]
    sh(repo, "dvc", "add", "data/Training", "data/Testing")
    assert sorted(sh(repo, "git", "ls-files", "data").stdout.split()) == [
        "data/.gitignore",
        "data/README.md",
        "data/Testing.dvc",
        "data/Training.dvc",
    ]
    ignored = (repo / "data/.gitignore").read_text().split()
    assert ignored.count("/Training") == 1 and ignored.count("/Testing") == 1
    sh(repo, "git", "commit", "-q", "-m", "track the dataset with DVC")
    before = file_hashes(repo / "data")
    assert len([p for p in before if p.endswith(".jpg")]) == 4 * (6 + 3)

    sh(repo, "dvc", "remote", "add", "-d", "local", str(tmp_path / "remote"))
    sh(repo, "dvc", "push")
    for gone in ("data/Training", "data/Testing", ".dvc/cache"):
        shutil.rmtree(repo / gone)
    sh(repo, "dvc", "pull", "data/Training.dvc", "data/Testing.dvc")  # the pipeline never ran: no outputs to pull
    assert file_hashes(repo / "data") == before

    sh(repo, "dvc", "repro", "validate")  # a lock entry for validate (the other stages never ran here)
    assert "validate" not in changed(repo)
    image = min((repo / "data/Testing/no_tumor").glob("*.jpg"))
    shutil.copyfile(min((repo / "data/Testing/glioma_tumor").glob("*.jpg")), image)
    status = json.loads(sh(repo, "dvc", "status", "--json").stdout)
    assert {"changed deps": {"data/Testing": "modified"}} in status["validate"]
    assert {"changed outs": {"data/Testing": "modified"}} in status["data/Testing.dvc"]
    assert ran(out(sh(repo, "dvc", "repro", "--dry", "validate"))) == {"validate"}


# ---- the store a `dvc exp run --temp` copy logs to (fast) --------------------------------------------------------


def test_tracking_uri_from_a_temp_experiment_copy(tmp_path, monkeypatch):
    from braintumor.tracking.runs import tracking_uri

    repo = (tmp_path / "repo").resolve()
    copy = repo / ".dvc" / "tmp" / "exps" / "standalone" / "tmp1234"
    (copy / ".dvc").mkdir(parents=True)  # the copy is a DVC repository of its own
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{repo / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///team.db")  # relative: from the repository root too
    assert tracking_uri() == f"sqlite:///{repo / 'team.db'}"
    for uri in (f"sqlite:///{tmp_path / 'abs.db'}", "http://127.0.0.1:5000"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert tracking_uri() == uri


# ---- 6. the package-per-concern layout changed where code lives, not what it computes --------------------------

FLAT_LAYOUT = "4fe6d1a7919ca403b8238ed799088fbd2afabf1c"  # the last commit before src/braintumor became packages
# Outputs that hold what differs between any two runs (run ids, times), or compared below (the model file).
NOT_COMPARED = {"reports/mlflow_run.json", "reports/report.html", "reports/model_card.md", "models/model.pt"}


def timeless(values: dict) -> dict:
    return {k: v for k, v in values.items() if not k.endswith(("per_s", "seconds"))}


def comparable(repo: Path, relative: str):
    """An output with the repository's path taken out, and its timings (seconds, images per second) dropped."""
    path = repo / relative
    if path.suffix == ".png":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    text = path.read_text().replace(str(repo), "<repo>")
    if path.suffix == ".json":
        return timeless(json.loads(text))
    if path.suffix == ".csv":
        return timeless(pd.read_csv(io.StringIO(text)).to_dict("list"))
    return text


@pytest.mark.slow
def test_outputs_are_those_of_the_flat_layout(project, module_dir):
    """The pipeline run by the last commit before the package layout, on the same tiny sample with the same seeds,
    writes the same manifest, validation report, metrics, plots and model file (weights and all it carries) as this
    code (issue 26: no behaviour change). Needs the repository's history: a shallow clone lacks the commit."""
    import torch

    if sh(REPO, "git", "cat-file", "-e", f"{FLAT_LAYOUT}^{{commit}}", check=False).returncode != 0:
        pytest.skip(f"commit {FLAT_LAYOUT[:7]} is not in this clone (a shallow one?): nothing to compare with")
    source = module_dir / "flat-layout"
    source.mkdir()
    archive = subprocess.run(["git", "archive", FLAT_LAYOUT], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    before = make_project(module_dir / "before", source=source, deterministic=True)
    # The flat layout's train stage left the network's initial weights to torch's own seed, which differs in every
    # process: its interpreters start seeded as this code's train stage seeds them (train.seed) before building it.
    (module_dir / "seeded").mkdir()
    (module_dir / "seeded" / "sitecustomize.py").write_text(
        "import random, numpy, torch\nrandom.seed(42)\nnumpy.random.seed(42)\ntorch.manual_seed(42)\n"
    )
    paths = os.pathsep.join([str(source / "src"), str(module_dir / "seeded")])  # ahead of this code's install
    old_code = {**_env(), "PYTHONPATH": paths}
    imaging = subprocess.run(["python", "-c", "import braintumor.imaging"], cwd=before, env=old_code, check=False)
    assert imaging.returncode == 0, "the flat layout's code is not the one imported"
    result = subprocess.run(["dvc", "repro"], cwd=before, env=old_code, text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]

    after = project["repo"]
    for relative in sorted(set(OUTPUTS) - NOT_COMPARED):
        assert comparable(after, relative) == comparable(before, relative), relative
    old = torch.load(before / "models/model.pt", map_location="cpu", weights_only=True)
    new = torch.load(after / "models/model.pt", map_location="cpu", weights_only=True)
    new["metrics"], old["metrics"] = timeless(new["metrics"]), timeless(old["metrics"])
    assert same(new, old)


def same(a, b) -> bool:
    """Equal to the bit: dicts, lists and tensors (a model file's weights, its novelty score's statistics)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
