"""Typed params: params.yaml is read once into these dataclasses, and every key is checked before any work.

An unknown key, a wrong type or an out-of-range value raises `ConfigError` naming the key, the value and
what is allowed, so `dvc exp run -S train.lr=abc` fails in a second, not after an hour of training.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from braintumor.errors import ConfigError

# The defaults of every key are params.yaml's values (tests/test_config.py checks that the two agree).
DEFAULT_CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
DEFAULT_ALIASES = {
    "glioma": "glioma_tumor",
    "meningioma": "meningioma_tumor",
    "notumor": "no_tumor",
    "pituitary": "pituitary_tumor",
}  # the newer Kaggle set's folder names
MAX_SEED = 2**32 - 1  # numpy, torch and Python's random all take it; train.seed * 1000 + epoch stays far below 2**63


@dataclass(frozen=True)
class PathsConfig:
    """Every file and folder the pipeline reads or writes (dvc.yaml reads the same keys)."""

    data: str = "data"
    manifest: str = "manifests/splits.csv"
    validation_report: str = "reports/validation.json"
    preview: str = "reports/augment_preview.png"
    model: str = "models/model.pt"
    train_metrics: str = "metrics/train.json"
    train_plots: str = "plots/train"
    run_info: str = "reports/mlflow_run.json"
    eval_metrics: str = "metrics/eval.json"
    eval_plots: str = "plots/eval"
    model_card: str = "reports/model_card.md"
    report: str = "reports/report.html"
    cache: str = ".cache"


@dataclass(frozen=True)
class DataConfig:
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    # Folder names in a user's dataset that mean one of `classes` (e.g. the Kaggle set's `notumor`).
    aliases: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES))
    val_fraction: float = 0.15
    split_seed: int = 42
    # Pearson correlation of 64x64 grayscale thumbnails above which two images are near copies.
    near_duplicate_threshold: float = 0.97
    # Limits checked on a file's size and header, before its pixels are decoded: decompression bombs, thin
    # images (1 x 40,000 pixels) that resizing would blow up, and files too big to read into memory.
    max_image_pixels: int = 40_000_000
    max_aspect_ratio: float = 5.0  # long side / short side; MRI slices are near square
    max_file_bytes: int = 250_000_000  # a 16-bit 8192 x 8192 uncompressed TIFF is 134 MB
    # DICOM frames or NIfTI slices in one file, checked on the header before decoding; also the pictures one served
    # request may hold (all its rows together), so one request's work stays within the server's timeout.
    max_frames: int = 1000
    on_bad_file: Literal["exclude", "fail"] = "exclude"

    def __post_init__(self) -> None:
        _check(len(self.classes) >= 2, "data.classes", self.classes, "at least two class names")
        _check(len(set(self.classes)) == len(self.classes), "data.classes", self.classes, "distinct names")
        for name in self.classes:
            _check(is_plain_name(name), "data.classes", name, PLAIN_NAME)
        for alias, target in self.aliases.items():
            _check(is_plain_name(alias), "data.aliases", alias, f"folder names: {PLAIN_NAME}")
            _check(target in self.classes, f"data.aliases.{alias}", target, f"one of {self.classes}")
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction, "a number in (0, 1)")
        _check(0 <= self.split_seed <= MAX_SEED, "data.split_seed", self.split_seed, f"an integer in [0, {MAX_SEED}]")
        _check(
            0.0 < self.near_duplicate_threshold <= 1.0,
            "data.near_duplicate_threshold",
            self.near_duplicate_threshold,
            "a number in (0, 1]",
        )
        pillow_limit = _pillow_pixel_limit()
        _check(
            0 < self.max_image_pixels <= pillow_limit,
            "data.max_image_pixels",
            self.max_image_pixels,
            f"an integer in [1, {pillow_limit:,}] (above that, Pillow's own decompression-bomb check fires first)",
        )
        _check(
            1.0 <= self.max_aspect_ratio <= 100.0,
            "data.max_aspect_ratio",
            self.max_aspect_ratio,
            "a ratio of long side to short side in [1, 100]",
        )
        _check(self.max_file_bytes > 0, "data.max_file_bytes", self.max_file_bytes, "a positive number of bytes")
        _check(
            0 < self.max_frames <= 100_000,
            "data.max_frames",
            self.max_frames,
            "an integer in [1, 100,000] (frames or slices in one file; pictures in one served request)",
        )


PLAIN_NAME = (
    "a plain folder name: not empty, no / or \\, not starting with a dot, no control characters, "
    "no leading or trailing spaces"
)


def is_plain_name(name: str) -> bool:
    """Can `name` be one folder inside data/Training? (Never a path: `../../x` would leave data/.)"""
    return (
        bool(name)
        and name == name.strip()
        and not name.startswith(".")
        and not any(c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name)
    )


def _pillow_pixel_limit() -> int:
    """Pillow warns about (and scans/raster.py refuses) images over Image.MAX_IMAGE_PIXELS before our own check."""
    from PIL import Image  # here, not at the top: loading params stays light

    return int(Image.MAX_IMAGE_PIXELS) if Image.MAX_IMAGE_PIXELS else 2**62


@dataclass(frozen=True)
class PreprocessConfig:
    """What every scan goes through before the network (preprocess.py); saved in the model file, so evaluation,
    `braintumor predict` and the served model repeat exactly what training saw."""

    head_crop: bool = True
    crop_threshold: float = 0.1
    crop_margin: float = 0.04
    intensity: Literal["none", "percentile", "equalize"] = "percentile"
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.0])

    def __post_init__(self) -> None:
        _check(
            0.0 < self.crop_threshold < 1.0,
            "preprocess.crop_threshold",
            self.crop_threshold,
            "a fraction of the scan's 99th percentile in (0, 1)",
        )
        _check(
            0.0 <= self.crop_margin <= 0.5,
            "preprocess.crop_margin",
            self.crop_margin,
            "a fraction of the head box in [0, 0.5]",
        )
        lo_hi = self.percentiles
        _check(
            len(lo_hi) == 2 and 0.0 <= lo_hi[0] < lo_hi[1] <= 100.0,
            "preprocess.percentiles",
            lo_hi,
            "[low, high] with 0 <= low < high <= 100",
        )


@dataclass(frozen=True)
class AugmentConfig:
    """The train preset (transforms.py) and the preview of it."""

    crop_scale: list[float] = field(default_factory=lambda: [0.7, 1.0])
    hflip: bool = True
    rotation_degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    intensity_curve: float = 0.0  # share of scans mapped through a random (non-monotonic) intensity curve; 0 = off
    gamma: float = 1.0  # gamma drawn log-uniformly in [1/gamma, gamma]; 1 = off
    blur_sharpen: float = 0.0  # x + s * (x - blur(x)), s uniform in [-blur_sharpen, blur_sharpen]; 0 = off
    noise: float = 0.0  # Gaussian noise, its std uniform in [0, noise] (pixel range 0..1); 0 = off
    preview_seed: int = 0
    preview_images_per_class: int = 2
    preview_views: int = 4

    def __post_init__(self) -> None:
        lo_hi = self.crop_scale
        _check(
            len(lo_hi) == 2 and 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0,
            "augment.crop_scale",
            lo_hi,
            "[min, max] with 0 < min <= max <= 1",
        )
        _check(
            0.0 <= self.rotation_degrees <= 180.0,
            "augment.rotation_degrees",
            self.rotation_degrees,
            "degrees in [0, 180] (0 switches rotation off)",
        )
        for key in ("brightness", "contrast"):
            value = getattr(self, key)
            _check(0.0 <= value < 1.0, f"augment.{key}", value, "a jitter strength in [0, 1) (0 switches it off)")
        _check(
            0.0 <= self.intensity_curve <= 1.0,
            "augment.intensity_curve",
            self.intensity_curve,
            "a probability in [0, 1] (0 switches it off)",
        )
        _check(1.0 <= self.gamma <= 4.0, "augment.gamma", self.gamma, "a number in [1, 4] (1 switches it off)")
        _check(
            0.0 <= self.blur_sharpen <= 1.0,
            "augment.blur_sharpen",
            self.blur_sharpen,
            "a strength in [0, 1] (0 switches it off)",
        )
        _check(0.0 <= self.noise <= 0.5, "augment.noise", self.noise, "a noise std in [0, 0.5] (0 switches it off)")
        _check(
            0 <= self.preview_seed <= MAX_SEED,
            "augment.preview_seed",
            self.preview_seed,
            f"an integer in [0, {MAX_SEED}]",
        )
        _check(
            self.preview_images_per_class >= 1,
            "augment.preview_images_per_class",
            self.preview_images_per_class,
            "an integer >= 1",
        )
        _check(self.preview_views >= 1, "augment.preview_views", self.preview_views, "an integer >= 1")


@dataclass(frozen=True)
class ModelConfig:
    # `imagenet` (torchvision's IMAGENET1K_V2, downloaded once to the torch cache), `none`, or a state-dict path.
    weights: str = "none"
    dropout: float = 0.0
    image_size: int = 64  # network input (crop) size; 224 (resize 256) is the ImageNet recipe for real scans
    resize_size: int = 72  # scans are resized to this square before cropping
    tta_hflip: bool = False  # average each scan's prediction with its mirror image's (everywhere it predicts)
    # Flag scans less like the Training scans than this share of the val scans (novelty.py); 0 = no score.
    unlike_training_quantile: float = 0.95

    def __post_init__(self) -> None:
        _check(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "a probability in [0, 1)")
        _check(self.image_size >= 32, "model.image_size", self.image_size, "an integer >= 32")
        _check(
            self.resize_size >= self.image_size,
            "model.resize_size",
            self.resize_size,
            f"an integer >= model.image_size ({self.image_size})",
        )
        _check(
            self.unlike_training_quantile == 0 or 0.5 <= self.unlike_training_quantile < 1,
            "model.unlike_training_quantile",
            self.unlike_training_quantile,
            "a share of val scans in [0.5, 1) (e.g. 0.95), or 0 for no novelty score",
        )
        if self.weights not in ("imagenet", "none"):
            _check(
                Path(self.weights).suffix in (".pt", ".pth"),
                "model.weights",
                self.weights,
                "'imagenet', 'none' or the path of a local .pt/.pth state dict",
            )


@dataclass(frozen=True)
class TrainConfig:
    device: Literal["auto", "cuda", "cpu", "mps"] = "auto"
    epochs: int = 10
    batch_size: int = 32  # per process; under torchrun the global batch is this times the world size
    # sgd: the seed's recipe (with ImageNet weights). adamw: learns much faster from scratch (weights: none).
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 0.001
    momentum: float = 0.9  # sgd only
    nesterov: bool = False
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    mixup: float = 0.0  # alpha of mixup's Beta(alpha, alpha) blend of two scans and their labels; 0 = off
    scheduler: Literal["step", "cosine"] = "cosine"
    step_size: int = 7
    gamma: float = 0.1
    warmup_epochs: int = 1
    grad_clip: float = 0.0  # max gradient norm; 0 switches clipping off
    freeze: Literal["none", "backbone", "stem", "layer1", "layer2", "layer3", "layer4"] = "none"
    head_only_epochs: int = 0
    patience: int = 0  # early stopping after this many epochs without a better val macro-F1; 0 = off
    num_workers: int = 0
    pin_memory: bool = True
    amp: bool = True  # CUDA only: bf16 autocast where supported, else fp16 with a grad scaler
    # bf16 autocast on CPU. auto: on when the CPU has AMX or AVX512-BF16 (2.5x faster there), fp32 otherwise.
    cpu_bf16: Literal["auto"] | bool = "auto"
    ema_decay: float = 0.0  # exponential moving average of the weights, per step; validated and saved; 0 = off
    # Stochastic weight averaging (Izmailov et al. 2018): the equal average of the weights after every step of the
    # last N epochs, batch-norm statistics recomputed on the train scans; saved instead of the best epoch. 0 = off
    swa_epochs: int = 0
    # How the temperature of the probabilities is fitted after training (calibration.py). val: on the val scans
    # (Guo et al. 2017). shifted: on the val scans and six copies of them through the train preset's intensity
    # augmentation, two at each of 1x, 2x and 3x its strength, for scans from other scanners (Tomani et al. 2021).
    # none: T = 1.
    calibration: Literal["val", "shifted", "none"] = "shifted"
    channels_last: bool = True
    compile: bool = False
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    deterministic: bool = False
    seed: int = 42

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "step_size"):
            _check(getattr(self, key) >= 1, f"train.{key}", getattr(self, key), "an integer >= 1")
        for key in ("warmup_epochs", "head_only_epochs", "patience", "num_workers", "threads", "swa_epochs"):
            _check(getattr(self, key) >= 0, f"train.{key}", getattr(self, key), "an integer >= 0")
        _check(0 <= self.seed <= MAX_SEED, "train.seed", self.seed, f"an integer in [0, {MAX_SEED}]")
        _check(self.lr > 0, "train.lr", self.lr, "a positive learning rate")
        _check(0.0 <= self.momentum < 1.0, "train.momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, "a number >= 0")
        _check(
            self.ema_decay == 0.0 or 0.9 <= self.ema_decay < 1.0,
            "train.ema_decay",
            self.ema_decay,
            "0 (off) or a decay in [0.9, 1), e.g. 0.998",
        )
        _check(0.0 <= self.label_smoothing < 1.0, "train.label_smoothing", self.label_smoothing, "a number in [0, 1)")
        _check(
            0.0 <= self.mixup <= 10.0,
            "train.mixup",
            self.mixup,
            "the alpha of Beta(alpha, alpha), in [0, 10] (0 switches mixup off; 0.2-0.4 is usual)",
        )
        _check(0.0 < self.gamma <= 1.0, "train.gamma", self.gamma, "a number in (0, 1]")
        _check(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a max norm >= 0 (0 = off)")
        _check(
            not (self.nesterov and self.optimizer != "sgd"),
            "train.nesterov",
            self.nesterov,
            "false unless train.optimizer is sgd",
        )
        _check(
            not (self.nesterov and self.momentum == 0),
            "train.nesterov",
            self.nesterov,
            "false when train.momentum is 0 (Nesterov needs momentum)",
        )
        _check(
            self.head_only_epochs < self.epochs or self.head_only_epochs == 0,
            "train.head_only_epochs",
            self.head_only_epochs,
            f"fewer than train.epochs ({self.epochs})",
        )
        _check(
            self.swa_epochs <= self.epochs,
            "train.swa_epochs",
            self.swa_epochs,
            f"at most train.epochs ({self.epochs}): the average is taken over the last swa_epochs epochs",
        )
        _check(
            not (self.swa_epochs and self.patience),
            "train.swa_epochs",
            self.swa_epochs,
            "0 when train.patience is set: early stopping would end training before the averaged epochs",
        )


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = 32
    calibration_bins: int = 15
    # Another labelled dataset (a folder of <class>/ folders; data.aliases apply) scored next to Testing; "" = none.
    external_data: str = ""
    # What the champion/challenger rule compares (pipeline.SAME_SCANS): the new model and the champion are both
    # scored on the same rows (leak-free Testing scans, all Testing, or val); the leak-free choices use all of
    # Testing when no Testing scan is leak-free. Ties keep the champion.
    promotion_metric: Literal["leak_free_macro_f1", "leak_free_accuracy", "macro_f1", "accuracy", "val_macro_f1"] = (
        "leak_free_macro_f1"
    )

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "an integer >= 1")
        _check(self.calibration_bins >= 2, "evaluate.calibration_bins", self.calibration_bins, "an integer >= 2")


@dataclass(frozen=True)
class ReportConfig:
    sample_predictions: int = 12
    confident_mistakes: int = 6
    gradcam: bool = True

    def __post_init__(self) -> None:
        _check(self.sample_predictions >= 0, "report.sample_predictions", self.sample_predictions, "an integer >= 0")
        _check(self.confident_mistakes >= 0, "report.confident_mistakes", self.confident_mistakes, "an integer >= 0")


@dataclass(frozen=True)
class TrackingConfig:
    experiment: str = "brain-tumor-mri"
    registered_model: str = "brain-tumor-classifier"
    log_model: bool = True

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "tracking.experiment", self.experiment, "a non-empty name")
        _check(
            bool(self.registered_model.strip()), "tracking.registered_model", self.registered_model, "a non-empty name"
        )


@dataclass(frozen=True)
class Params:
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        augment = self.augment
        has_intensity_shift = (
            augment.gamma > 1
            or augment.brightness > 0
            or augment.contrast > 0
            or augment.blur_sharpen > 0
            or augment.noise > 0
        )
        _check(
            self.train.calibration != "shifted" or has_intensity_shift,
            "train.calibration",
            self.train.calibration,
            "val or none when the augment section has no intensity augmentation "
            "(shifted copies val through augment.gamma, brightness, contrast, blur_sharpen and noise)",
        )

    def flat(self) -> dict[str, Any]:
        """`{"train.lr": 0.01, ...}`: the form MLflow params and `dvc exp run -S` use."""
        return dict(_flatten(self.to_dict()))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"params file not found: {path.resolve()}. Run from the repository root, or pass --params PATH."
        )
    import yaml  # only here: the training core imports this module on machines without PyYAML

    class ParamsLoader(yaml.SafeLoader):
        """PyYAML's safe loader plus YAML 1.2 floats without a dot (`lr: 1e-3`), which PyYAML reads as strings.

        DVC reads params.yaml as YAML 1.2, so without this `dvc params diff` would show 0.001 where we refuse '1e-3'.
        """

    ParamsLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."),
    )
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=ParamsLoader) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return params_from_dict(raw, source=str(path))


def params_from_dict(raw: Any, source: str = "params") -> Params:
    try:
        return _build(Params, raw, prefix="")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")


def _flatten(obj: dict[str, Any], prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not name.startswith("data.aliases"):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(raw) - set(fields)))
    if unknown:
        raise ConfigError(f"unknown key {prefix}{unknown[0]} in {where}; allowed keys: {', '.join(fields)}")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{prefix}{name}")
    return cls(**values)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} = {value!r} is not allowed: expected one of {', '.join(map(str, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(option, value, key)
            except ConfigError:
                continue
        described = [
            ", ".join(map(str, typing.get_args(a)))
            if typing.get_origin(a) is Literal
            else "true, false"
            if a is bool
            else a.__name__
            for a in args
        ]
        raise ConfigError(f"{key} = {value!r} is not allowed: expected one of {', '.join(described)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a list")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if value is None:  # a section whose entries are all commented out
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a mapping")
        return {_coerce(args[0], k, f"{key} key"): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a number")
        if not math.isfinite(value):  # `.inf` and `.nan` are valid YAML floats
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a finite number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} has the wrong type: expected a string")
        return value
    raise TypeError(f"unsupported type {hint} for {key}")  # a bug in this module, not a user error
