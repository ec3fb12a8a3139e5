"""params.yaml is checked key by key: a typo, a wrong type or a bad value stops a run at once with a message
that names the key, the value and what is allowed."""

from __future__ import annotations

import re

import pytest
import yaml
from helpers import REPO, run, tiny_params_dict

from braintumor.config import Params, load_params, params_from_dict
from braintumor.errors import BrainTumorError, ConfigError


def config_error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    return str(info.value)


def test_repository_params_yaml_loads_with_every_value_it_sets():
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    loaded = params.to_dict()
    # Every key in the file is a field and arrives with the file's value (not a default).
    for section, values in raw.items():
        for key, value in values.items():
            assert loaded[section][key] == value, f"{section}.{key}"


def test_empty_file_and_empty_sections_give_the_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing set\n", encoding="utf-8")
    (tmp_path / "sections.yaml").write_text("train:\ndata:\n", encoding="utf-8")
    assert load_params(tmp_path / "empty.yaml") == Params()
    assert load_params(tmp_path / "sections.yaml") == Params()


def test_a_valid_override_is_applied_and_converted(tmp_path):
    params = params_from_dict(tiny_params_dict(tmp_path, train={"lr": 1, "scheduler": "cosine"}))
    assert params.train.lr == 1.0 and isinstance(params.train.lr, float)  # an integer is a valid number
    assert params.train.scheduler == "cosine"
    assert params.paths.data == str(tmp_path)


def test_unknown_top_level_section_is_named_with_the_allowed_sections():
    message = config_error({"trian": {"lr": 0.1}})
    assert "unknown key trian" in message
    for section in ("paths", "data", "augment", "model", "train", "evaluate", "report", "tracking"):
        assert section in message.split("allowed keys:")[1]


def test_unknown_nested_key_is_named_with_the_allowed_keys_of_its_section():
    message = config_error({"train": {"learning_rate": 0.1}})
    assert "train.learning_rate" in message
    allowed = message.split("allowed keys:")[1]
    for key in ("lr", "epochs", "batch_size", "scheduler"):
        assert re.search(rf"\b{key}\b", allowed), key
    # The keys of another section are not offered.
    assert "val_fraction" not in allowed


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("train", "lr", "abc", "a number"),
        ("train", "epochs", 1.5, "an integer"),
        ("train", "epochs", True, "an integer"),  # YAML `yes` is a bool, not a count
        ("train", "nesterov", "yes", "true or false"),
        ("train", "lr", True, "a number"),
        ("data", "classes", "glioma_tumor", "a list"),
        ("data", "aliases", ["notumor"], "a mapping"),
        ("model", "weights", 3, "a string"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(section, key, value, expected):
    message = config_error({section: {key: value}})
    assert f"{section}.{key} = {value!r}" in message
    assert "wrong type" in message and expected in message


def test_wrong_type_inside_a_list_names_the_item():
    message = config_error({"augment": {"crop_scale": [0.5, "big"]}})
    assert "augment.crop_scale[1] = 'big'" in message


def test_a_section_that_is_not_a_mapping_is_refused():
    assert "train must be a mapping" in config_error({"train": 0.01})
    assert "top level must be a mapping" in config_error(["train"])


@pytest.mark.parametrize(
    "overrides, key, value",
    [
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction", 1.5),
        ({"data": {"val_fraction": 0}}, "data.val_fraction", 0.0),
        ({"data": {"near_duplicate_threshold": 1.2}}, "data.near_duplicate_threshold", 1.2),
        ({"data": {"max_image_pixels": 0}}, "data.max_image_pixels", 0),
        ({"data": {"classes": ["only_one"]}}, "data.classes", ["only_one"]),
        ({"data": {"classes": ["a", "b", "a"]}}, "data.classes", ["a", "b", "a"]),
        ({"model": {"image_size": 64, "resize_size": 48}}, "model.resize_size", 48),
        ({"model": {"image_size": 16, "resize_size": 16}}, "model.image_size", 16),
        ({"model": {"weights": "resnet.ckpt"}}, "model.weights", "resnet.ckpt"),
        ({"augment": {"crop_scale": [0.9, 0.5]}}, "augment.crop_scale", [0.9, 0.5]),
        ({"augment": {"crop_scale": [0.5]}}, "augment.crop_scale", [0.5]),
        ({"augment": {"brightness": 1.0}}, "augment.brightness", 1.0),
        ({"train": {"lr": 0}}, "train.lr", 0.0),
        ({"train": {"lr": float("nan")}}, "train.lr", float("nan")),
        ({"train": {"epochs": 0}}, "train.epochs", 0),
        ({"train": {"momentum": 1.0}}, "train.momentum", 1.0),
        ({"train": {"mixup": -0.2}}, "train.mixup", -0.2),
        ({"train": {"epochs": 3, "head_only_epochs": 3}}, "train.head_only_epochs", 3),
        ({"evaluate": {"calibration_bins": 1}}, "evaluate.calibration_bins", 1),
        ({"tracking": {"experiment": "  "}}, "tracking.experiment", "  "),
    ],
)
def test_out_of_range_value_names_key_value_and_what_is_allowed(overrides, key, value):
    message = config_error(overrides)
    assert f"{key} = {value!r} is not allowed: expected " in message


def test_resize_smaller_than_crop_says_what_it_must_exceed():
    message = config_error({"model": {"image_size": 64, "resize_size": 48}})
    assert "model.image_size (64)" in message


@pytest.mark.parametrize(
    "section, key, value, choices",
    [
        ("train", "scheduler", "linear", ["step", "cosine"]),
        ("train", "device", "gpu", ["auto", "cuda", "cpu", "mps"]),
        ("train", "freeze", "layer5", ["none", "backbone", "stem", "layer1", "layer4"]),
        ("data", "on_bad_file", "delete", ["exclude", "fail"]),
    ],
)
def test_choice_outside_the_allowed_values_lists_them(section, key, value, choices):
    message = config_error({section: {key: value}})
    assert f"{section}.{key} = {value!r}" in message
    listed = message.split("expected one of")[1]
    for choice in choices:
        assert choice in listed


def test_alias_to_an_unknown_class_names_the_alias_and_the_classes():
    message = config_error({"data": {"aliases": {"notumor": "healthy"}}})
    assert "data.aliases.notumor = 'healthy'" in message
    assert "no_tumor" in message and "glioma_tumor" in message


def test_alias_to_a_custom_class_list_is_checked_against_that_list():
    params = params_from_dict({"data": {"classes": ["tumor", "healthy"], "aliases": {"normal": "healthy"}}})
    assert params.data.aliases == {"normal": "healthy"}
    assert "data.aliases.notumor" in config_error(
        {"data": {"classes": ["tumor", "healthy"], "aliases": {"notumor": "no_tumor"}}}
    )


def test_flat_gives_dotted_keys_for_every_leaf():
    params = params_from_dict({"train": {"lr": 0.003}, "data": {"aliases": {"notumor": "no_tumor"}}})
    flat = params.flat()
    assert flat["train.lr"] == 0.003
    assert flat["data.val_fraction"] == params.data.val_fraction
    assert flat["paths.data"] == params.paths.data
    assert flat["augment.crop_scale"] == params.augment.crop_scale
    # Aliases stay one value: their keys are folder names, not params.
    assert flat["data.aliases"] == {"notumor": "no_tumor"}
    assert not any(key.startswith("data.aliases.") for key in flat)
    assert all("." in key for key in flat)
    # One entry per dataclass field, nothing else.
    expected = sum(len(section) for section in params.to_dict().values())
    assert len(flat) == expected


def test_load_params_names_the_file_in_the_error(tmp_path):
    path = tmp_path / "my-params.yaml"
    path.write_text("train:\n  lr: abc\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_params(path)
    message = str(info.value)
    assert str(path) in message and "train.lr = 'abc'" in message


def test_load_params_reports_unknown_key_from_a_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  val_fraction: 0.2\n  split_sed: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key data\.split_sed.*allowed keys:.*split_seed"):
        load_params(path)


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # PyYAML reads `1e-3` as a string (YAML 1.1); DVC reads it as a number (YAML 1.2). Both must agree.
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n  weight_decay: 5E-5\ndata:\n  max_image_pixels: 1000\n", encoding="utf-8")
    params = load_params(path)
    assert params.train.lr == pytest.approx(0.001)
    assert params.train.weight_decay == pytest.approx(5e-5)
    assert params.data.max_image_pixels == 1000
    # A quoted string stays a string, and is refused.
    path.write_text('train:\n  lr: "1e-3"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="train.lr = '1e-3' has the wrong type"):
        load_params(path)


def test_missing_file_and_invalid_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, BrainTumorError)


def test_params_are_immutable():
    params = Params()
    with pytest.raises(AttributeError):
        params.train.lr = 1.0  # type: ignore[misc]


def test_cli_reports_a_bad_param_in_one_line_without_traceback(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  scheduler: linear\n", encoding="utf-8")
    result = run([str(REPO / ".venv/bin/braintumor"), "validate", "--params", str(path)], cwd=tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "train.scheduler = 'linear'" in errors[0] and "step" in errors[0] and "cosine" in errors[0]


def test_the_dataclass_defaults_are_params_yaml():
    """One source of defaults: a key left out of params.yaml means what params.yaml says, and test params are
    params.yaml's recipe plus the overrides each test names."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    defaults = Params().to_dict()
    assert set(raw) == set(defaults)
    for section, values in raw.items():
        assert set(values) == set(defaults[section]), f"params.yaml {section} keys differ from the dataclass"
        for key, value in values.items():
            assert defaults[section][key] == value, (
                f"{section}.{key}: dataclass {defaults[section][key]!r}, params.yaml {value!r}"
            )


# --- params that used to load and fail later -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key, value",
    [
        ({"train": {"seed": -1}}, "train.seed", -1),
        ({"train": {"seed": 2**64}}, "train.seed", 2**64),
        ({"data": {"split_seed": -5}}, "data.split_seed", -5),
        ({"augment": {"preview_seed": 2**32}}, "augment.preview_seed", 2**32),
    ],
)
def test_a_seed_outside_what_numpy_and_torch_take_is_refused_at_load(overrides, key, value):
    assert f"{key} = {value!r} is not allowed: expected an integer in [0, 4294967295]" in config_error(overrides)


@pytest.mark.parametrize(
    "text, key",
    [
        ("train:\n  lr: .inf\n", "train.lr = inf"),
        ("train:\n  weight_decay: -.inf\n", "train.weight_decay = -inf"),
        ("data:\n  max_aspect_ratio: .nan\n", "data.max_aspect_ratio = nan"),
    ],
)
def test_an_infinite_or_nan_number_is_refused_at_load(tmp_path, text, key):
    (tmp_path / "params.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{key} is not allowed: expected a finite number")):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".hidden", "back\\slash", " padded", "tab\there", ""])
def test_a_class_name_that_is_not_a_plain_folder_name_is_refused(name):
    message = config_error({"data": {"classes": ["glioma", name]}})
    assert f"data.classes = {name!r} is not allowed: expected a plain folder name" in message
    # an alias can only point at a class, so it cannot name a path either
    message = config_error({"data": {"classes": ["glioma", "other"], "aliases": {"x": name}}})
    assert "data.aliases.x" in message


def test_an_alias_folder_name_that_is_a_path_is_refused():
    message = config_error({"data": {"aliases": {"../up": "no_tumor"}}})
    assert "data.aliases = '../up' is not allowed: expected folder names: a plain folder name" in message


def test_class_names_with_spaces_and_unicode_are_plain_folder_names():
    params = params_from_dict({"data": {"classes": ["no tumor", "gliome (grade 2)", "膠質腫"], "aliases": {}}})
    assert params.data.classes == ["no tumor", "gliome (grade 2)", "膠質腫"]


def test_a_pixel_limit_above_pillows_own_is_refused_at_load():
    from PIL import Image

    over = Image.MAX_IMAGE_PIXELS + 1
    message = config_error({"data": {"max_image_pixels": over}})
    assert (
        f"data.max_image_pixels = {over!r} is not allowed: expected an integer in [1, "
        f"{Image.MAX_IMAGE_PIXELS:,}] (above that, Pillow's own decompression-bomb check fires first)" in message
    )
    assert params_from_dict({"data": {"max_image_pixels": Image.MAX_IMAGE_PIXELS}})


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"data": {"max_aspect_ratio": 0.5}}, "data.max_aspect_ratio"),
        ({"data": {"max_aspect_ratio": 1000}}, "data.max_aspect_ratio"),
        ({"data": {"max_file_bytes": 0}}, "data.max_file_bytes"),
    ],
)
def test_image_limits_out_of_range_are_refused(overrides, key):
    assert f"{key} = " in config_error(overrides)
