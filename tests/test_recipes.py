"""Named recipes: each one is valid on params.yaml, trains, and becomes exactly the `dvc exp run -S` it claims."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from helpers import BIN, REPO, THREADS

from braintumor.data.cache import cached_images
from braintumor.data.validate import validate_dataset
from braintumor.errors import ConfigError
from braintumor.model.network import build_model
from braintumor.model.transforms import Preprocessing
from braintumor.recipes import Recipe, list_recipes, load_recipe
from braintumor.scans.limits import ImageLimits
from braintumor.training.loop import TrainData, fit

RECIPES = [r.name for r in list_recipes(REPO)]


def _params_yaml() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_documented_recipes_exist():
    assert {"cpu-scratch", "gpu-scratch-224", "imagenet-finetune", "imagenet-cpu"} <= set(RECIPES)
    for recipe in list_recipes(REPO):
        assert recipe.description


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid_on_params_yaml_and_sets_what_it_says(name):
    recipe = load_recipe(name, REPO)
    params = recipe.check(_params_yaml())
    flat = params.flat()
    for key, value in recipe.params.items():
        assert key in flat, f"{name}: {key} is not a params key"
        expected = tuple(value) if isinstance(value, list) else value
        got = tuple(flat[key]) if isinstance(flat[key], list) else flat[key]
        assert got == expected, key


# Options that change what is learned and are off by default: a recipe sets each, so that what an earlier
# `dvc exp run -S` left in params.yaml (DVC applies an experiment's params to the workspace) cannot ride along.
TECHNIQUES = (
    "augment.intensity_curve",
    "train.mixup",
    "train.grad_clip",
    "train.patience",
    "train.swa_epochs",
    "train.ema_decay",
    "train.label_smoothing",
    "train.freeze",
    "train.head_only_epochs",
)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_pins_every_optional_technique(name):
    recipe = load_recipe(name, REPO)
    assert not [key for key in TECHNIQUES if key not in recipe.params]
    raw = _params_yaml()
    raw["train"].update(mixup=0.4, swa_epochs=1, grad_clip=1.0)  # left over from variations tried before
    raw["augment"]["intensity_curve"] = 0.3
    params = recipe.check(raw).flat()
    assert all(params[key] == recipe.params[key] for key in TECHNIQUES)


@pytest.mark.parametrize("name", RECIPES)
def test_dvc_set_args_parse_back_to_the_recipe_values(name):
    """DVC reads each `-S key=value` value as YAML: what it reads must be what the recipe holds."""
    recipe = load_recipe(name, REPO)
    args = recipe.set_args()
    assert args[::2] == ["-S"] * len(recipe.params)
    parsed = {}
    for pair in args[1::2]:
        key, value = pair.split("=", 1)
        parsed[key] = yaml.safe_load(value)
    assert parsed == recipe.params


@pytest.mark.trains
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_trains_for_a_few_steps(name, sample_root, tmp_path):
    """The recipe's own sizes, preprocessing, augmentation, optimizer and schedule, on 16 sample scans.

    ImageNet weights cannot be downloaded here: a local ResNet50 state dict stands in for them (the same code
    path that loads `model.weights: <file>`), so everything else in the recipe runs as written."""
    recipe = load_recipe(name, REPO)
    params = recipe.check({**_params_yaml(), "paths": {"data": str(sample_root)}})
    weights = params.model.weights
    if weights == "imagenet":
        from torchvision.models import resnet50

        weights = str(tmp_path / "resnet50.pth")
        torch.save(resnet50(weights=None).state_dict(), weights)
    train = dataclasses.replace(
        params.train,
        epochs=1,
        warmup_epochs=0,
        head_only_epochs=0,
        batch_size=8,
        device="cpu",
        num_workers=0,
        threads=THREADS,
    )
    manifest = validate_dataset(sample_root, params.data, workers=1, progress=False).manifest
    frame = manifest[manifest["split"] != "test"].head(24)
    prep = Preprocessing.from_config(params.model, params.preprocess)
    images = cached_images(
        frame,
        sample_root,
        prep.scan,
        tmp_path / "cache",
        limits=ImageLimits(max_pixels=10**8),
        workers=1,
        progress=False,
    )
    labels = frame["label"].map({c: i for i, c in enumerate(params.data.classes)}).to_numpy()
    data = TrainData(images[:16], labels[:16], images[16:], labels[16:], params.data.classes)
    model = build_model(weights, len(params.data.classes), params.model.dropout)
    result = fit(model, data, train, params.augment, prep, checkpoint_path=tmp_path / "ckpt.pt", progress=False)
    assert len(result.history) == 1 and np.isfinite(result.history[0].train_loss)
    assert images.shape[1:] == (params.model.resize_size,) * 2


def test_recipe_command_dry_run_prints_the_dvc_experiment(tmp_path):
    result = subprocess.run(
        [str(BIN / "braintumor"), "recipe", "cpu-scratch", "--dry-run", "--", "--temp"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    command = shlex.split(result.stdout.strip().splitlines()[-1])
    assert command[:5] == ["dvc", "exp", "run", "-n", command[4]] and command[4].startswith("cpu-scratch-")
    assert command[5:-1] == load_recipe("cpu-scratch", REPO).set_args() and command[-1] == "--temp"
    listing = subprocess.run([str(BIN / "braintumor"), "recipe"], cwd=REPO, capture_output=True, text=True)
    assert all(name in listing.stdout for name in RECIPES)


def test_a_recipe_with_a_bad_key_or_value_fails_before_dvc_starts(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key train\.epochz.*recipes/bad\.yaml"):
        Recipe("bad", "", {"train.epochz": 3}).check(_params_yaml())
    with pytest.raises(ConfigError, match=r"model\.image_size = 8 is not allowed"):
        Recipe("bad", "", {"model.image_size": 8}).check(_params_yaml())
    (tmp_path / "recipes").mkdir()
    with pytest.raises(ConfigError, match="no recipe 'missing'"):
        load_recipe("missing", tmp_path)
    (tmp_path / "recipes" / "empty.yaml").write_text("description: nothing\n")
    with pytest.raises(ConfigError, match="expected a mapping with `description` and `params`"):
        load_recipe("empty", tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "braintumor.cli", "recipe", "missing"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2 and "no recipe 'missing'" in result.stderr and "Traceback" not in result.stderr
