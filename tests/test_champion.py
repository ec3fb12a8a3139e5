"""Who becomes champion: evaluate scores the new model and the current champion on the very same Testing rows.

The README's path, on small data: a first model is evaluated on one dataset (the built-in sample), then the user
swaps in another dataset and trains again. The first model's stored figure came from other scans and must never
decide. The models here are constant classifiers (a ResNet50 whose head always answers one class), so what each
scores on each Testing set is known exactly; they are registered through the pipeline's own path
(`RunTracker.log_served_model`) and evaluated by `pipeline.evaluate` against a real SQLite MLflow store.

Testing set A holds 6 gliomas and one scan of each other class: `always glioma` scores macro-F1 0.200 there.
Testing set B holds 3 meningiomas and one scan of each other class: `always meningioma` scores 0.167, `always
glioma` 0.071.
"""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from helpers import tiny_params_dict
from mlflow.tracking import MlflowClient
from PIL import Image

from braintumor.config import load_params
from braintumor.data.sample import write_sample_dataset
from braintumor.model.network import build_model, save_model
from braintumor.model.transforms import Preprocessing
from braintumor.processes import served_model

pytestmark = pytest.mark.slow

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
NAME = "brain-tumor-classifier"
SET_A = {"glioma_tumor": 6, "meningioma_tumor": 1, "no_tumor": 1, "pituitary_tumor": 1}
SET_B = {"glioma_tumor": 1, "meningioma_tumor": 3, "no_tumor": 1, "pituitary_tumor": 1}


def constant_macro_f1(counts: dict[str, int], answer: str) -> float:
    """Macro-F1 of a model that always answers `answer`: F1 of that class (recall 1), 0 for the others."""
    precision = counts[answer] / sum(counts.values())
    return 2 * precision / (precision + 1) / len(counts)


F1_GLIOMA_ON_A = constant_macro_f1(SET_A, "glioma_tumor")  # 0.200
F1_MENINGIOMA_ON_B = constant_macro_f1(SET_B, "meningioma_tumor")  # 0.167
F1_GLIOMA_ON_B = constant_macro_f1(SET_B, "glioma_tumor")  # 0.071


def _dataset(root: Path, seed: int, testing: dict[str, int]) -> None:
    """A sample dataset whose Testing set keeps only `testing` scans per class (the others are removed)."""
    write_sample_dataset(root, per_class=6, test_per_class=6, size=64, seed=seed)
    for folder in sorted((root / "Testing").iterdir()):
        for extra in sorted(folder.iterdir())[testing.get(folder.name, 0) :]:
            extra.unlink()


def _constant_model(path: Path, params, answer: str) -> Path:
    """A model file whose network always answers `answer` (the head's weights zero, its bias one-hot)."""
    model = build_model("none", len(CLASSES))
    with torch.no_grad():
        model.fc[1].weight.zero_()
        model.fc[1].bias.copy_(torch.tensor([8.0 if c == answer else 0.0 for c in CLASSES]))
    save_model(
        path,
        model,
        classes=CLASSES,
        preprocessing=Preprocessing.from_config(params.model, params.preprocess),
        params=params.to_dict(),
        metrics={},
    )
    return path


class Project:
    """A project folder: data/, params.yaml, the stages' outputs and mlflow.db; the stages run in-process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        (root / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict("data")))
        self.client = MlflowClient(self.uri, self.uri)

    def use_data(self, seed: int, testing: dict[str, int]) -> None:
        shutil.rmtree(self.root / "data", ignore_errors=True)
        _dataset(self.root / "data", seed, testing)

    def evaluate_new_version(self, answer: str, patch: pytest.MonkeyPatch) -> dict:
        """validate, register a model that always answers `answer` as training would, evaluate; the decision."""
        from braintumor import pipeline
        from braintumor.tracking.runs import RunTracker, write_run_info

        patch.chdir(self.root)
        patch.setenv("MLFLOW_TRACKING_URI", self.uri)
        params = load_params("params.yaml")
        pipeline.validate(params)
        _constant_model(Path(params.paths.model), params, answer)
        tracker = RunTracker(params)
        example = next((self.root / "data" / "Training" / CLASSES[0]).iterdir())
        version = pipeline.log_served_model(tracker, params, np.asarray(Image.open(example).convert("L")))
        write_run_info(params.paths.run_info, tracker, version)
        tracker.end()
        pipeline.evaluate(params)
        self.card = (self.root / params.paths.model_card).read_text()
        self.report_tags = self.client.get_run(json.loads(Path(params.paths.run_info).read_text())["run_id"]).data.tags
        return self.version(version)

    def version(self, version: str):
        return self.client.get_model_version(NAME, version)

    def alias(self, alias: str) -> str:
        return str(self.client.get_model_version_by_alias(NAME, alias).version)


@pytest.fixture(scope="module")
def project(module_dir):
    return Project(module_dir)


@pytest.fixture
def patch():
    with pytest.MonkeyPatch.context() as p:
        yield p
    mlflow.set_tracking_uri(None)  # never leave the tests after this one on this module's store


def test_readme_path_the_model_better_on_the_new_scans_becomes_champion(project, patch, capsys):
    project.use_data(seed=1, testing=SET_A)  # the built-in sample, say
    first = project.evaluate_new_version("glioma_tumor", patch)
    assert first.tags["test_macro_f1"] == f"{F1_GLIOMA_ON_A:.3f}" and project.alias("champion") == "1"
    assert first.tags["champion_score_on_same_scans"] == "no other champion"
    capsys.readouterr()

    project.use_data(seed=2, testing=SET_B)  # the user's real data
    second = project.evaluate_new_version("meningioma_tumor", patch)
    # 0.167 is below the 0.200 version 1 stored from other scans, but above the 0.071 it scores on these: champion
    assert F1_GLIOMA_ON_B < F1_MENINGIOMA_ON_B < F1_GLIOMA_ON_A
    assert project.alias("champion") == "2"
    assert float(second.tags["test_macro_f1"]) == pytest.approx(F1_MENINGIOMA_ON_B, abs=1e-3)
    assert second.tags["champion_score_on_same_scans"] == f"version 1: {F1_GLIOMA_ON_B:.3f}"
    assert second.tags["promotion_metric"] == f"leak_free_macro_f1={F1_MENINGIOMA_ON_B:.3f}"
    assert (
        second.tags["promotion_compared_on"].startswith("Testing")
        and "(6 scans)" in second.tags["promotion_compared_on"]
    )
    decided = f"version 1 (champion) {F1_GLIOMA_ON_B:.3f}, version 2 {F1_MENINGIOMA_ON_B:.3f}."
    printed = capsys.readouterr().out
    assert "Version 2 -> champion: leak_free_macro_f1 on 6 scans" in printed and decided in printed
    assert "Version 2 -> champion: leak_free_macro_f1 on 6 scans" in project.card and decided in project.card
    assert project.report_tags["promotion"] == "champion"

    # what a user serves now answers with version 2 (always meningioma), not the first model (always glioma)
    image = next((project.root / "data" / "Testing" / "glioma_tumor").iterdir())
    with served_model(
        f"models:/{NAME}@champion",
        project.root / "server.log",
        env={"MLFLOW_TRACKING_URI": project.uri},
        cwd=project.root,
    ) as server:
        body = json.dumps({"dataframe_records": [{"image": base64.b64encode(image.read_bytes()).decode()}]}).encode()
        request = urllib.request.Request(
            f"{server.url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["predictions"][0]
    assert answer["label"] == "meningioma_tumor"


def test_a_worse_model_on_the_same_scans_stays_challenger_and_a_tie_keeps_the_champion(project, patch):
    if project.alias("champion") != "2":
        pytest.skip("needs the first test's versions")
    third = project.evaluate_new_version("glioma_tumor", patch)  # 0.071 against the champion's 0.167
    assert project.alias("champion") == "2" and project.alias("challenger") == "3"
    assert third.tags["champion_score_on_same_scans"] == f"version 2: {F1_MENINGIOMA_ON_B:.3f}"
    assert "Version 3 -> challenger" in project.card
    assert f"version 2 (champion) {F1_MENINGIOMA_ON_B:.3f}, version 3 {F1_GLIOMA_ON_B:.3f}." in project.card

    project.evaluate_new_version("meningioma_tumor", patch)  # the same answers as the champion: a tie
    assert project.alias("champion") == "2" and project.alias("challenger") == "4"
    assert "(ties keep the champion)" in project.card


def test_a_champion_that_cannot_be_scored_gives_way_and_the_reason_is_recorded(project, patch):
    if project.alias("champion") != "2":
        pytest.skip("needs the first test's versions")
    champion = project.version("2")
    model_id = champion.source.removeprefix("models:/")
    stored = [p for p in (project.root / "mlartifacts").rglob("model.pt") if model_id in str(p)]
    assert stored, "version 2's model.pt not found under mlartifacts/"
    for path in stored:
        path.unlink()  # a file that no longer loads (an artifact store cleaned up by hand, say)
    fifth = project.evaluate_new_version("glioma_tumor", patch)
    assert project.alias("champion") == "5"
    assert fifth.tags["champion_score_on_same_scans"].startswith(
        "version 2: not scored (models:/brain-tumor-classifier/2 holds no model.pt"
    )
    assert "could not be scored on these" in project.card


def test_the_registered_model_says_what_it_is_and_where_its_card_is(project):
    model = project.client.get_registered_model(NAME)
    assert "Research use, not a diagnostic device" in model.description
    assert f"models:/{NAME}@champion" in model.description
    assert model.tags["disclaimer"] == "research use, not a diagnostic device"
    assert "glioma_tumor" in model.tags["intended_use"]
    assert model.tags["model_card"] == f"model_card.md in the artifacts of models:/{NAME}@champion"
