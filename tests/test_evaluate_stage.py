"""The evaluate stage refuses a model that does not fit the data, with a message that says what to do."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import tiny_params

from braintumor.data.splits import write_manifest
from braintumor.data.validate import validate_dataset
from braintumor.errors import BrainTumorError
from braintumor.model import build_model, save_model
from braintumor.pipeline import evaluate
from braintumor.transforms import Preprocessing


def _setup(sample_root, tmp_path, model_classes):
    params = tiny_params(sample_root)
    paths = dataclasses.replace(params.paths, manifest=str(tmp_path / "splits.csv"), model=str(tmp_path / "m.pt"),
                                run_info=str(tmp_path / "run.json"), cache=str(tmp_path / "cache"),
                                eval_metrics=str(tmp_path / "eval.json"), eval_plots=str(tmp_path / "plots"))
    params = dataclasses.replace(params, paths=paths)
    write_manifest(validate_dataset(sample_root, params.data, workers=1, progress=False).manifest, paths.manifest)
    save_model(paths.model, build_model("none", len(model_classes)), classes=model_classes,
               preprocessing=Preprocessing.from_config(params.model), params=params.to_dict(), metrics={})
    return params


def test_evaluate_refuses_a_model_trained_on_other_classes(sample_root, tmp_path):
    params = _setup(sample_root, tmp_path, ["glioma_tumor", "no_tumor"])
    with pytest.raises(BrainTumorError, match=r"trained on classes .*`dvc repro train`"):
        evaluate(params)
    assert not (tmp_path / "eval.json").exists()


def test_evaluate_without_a_model_or_manifest_says_which_stage_to_run(sample_root, tmp_path):
    params = _setup(sample_root, tmp_path, list(tiny_params(sample_root).data.classes))
    (tmp_path / "m.pt").unlink()
    with pytest.raises(BrainTumorError, match="dvc repro train"):
        evaluate(params)
    (tmp_path / "splits.csv").unlink()
    with pytest.raises(BrainTumorError, match="dvc repro validate"):
        evaluate(params)
