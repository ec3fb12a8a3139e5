"""Train and eval presets, side by side (after torchvision's classification reference, presets.py).

Both start from the (S, S) uint8 square that `imaging.square_resize` makes (S = model.resize_size), which is
also what the training cache stores. The same presets feed the augmentation preview, training, evaluation,
`braintumor predict` and the served model: what is previewed is what is trained, and what is served is what was
evaluated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2

from braintumor.config import AugmentConfig, ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to rebuild the eval transform; saved inside models/model.pt."""

    resize_size: int
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_config(cls, model: ModelConfig) -> Preprocessing:
        return cls(resize_size=model.resize_size, image_size=model.image_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict) -> Preprocessing:
        return cls(resize_size=int(spec["resize_size"]), image_size=int(spec["image_size"]),
                   mean=tuple(spec["mean"]), std=tuple(spec["std"]))


def gray_to_three(x: torch.Tensor) -> torch.Tensor:
    """(1, H, W) -> (3, H, W): a grayscale scan repeated for the ImageNet stem (a view, no copy)."""
    return x.expand(3, -1, -1)


def _to_model_input(prep: Preprocessing) -> list:
    # (1, H, W) uint8 grayscale -> (3, H, W) float normalised
    return [
        v2.Lambda(gray_to_three),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(prep.mean), std=list(prep.std)),
    ]


def train_preset(prep: Preprocessing, augment: AugmentConfig) -> v2.Compose:
    """Random crop/flip/rotate/jitter of a (1, S, S) uint8 tensor -> (3, image_size, image_size) float."""
    steps: list = [v2.RandomResizedCrop(prep.image_size, scale=tuple(augment.crop_scale), antialias=True)]
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.rotation_degrees > 0:
        steps.append(v2.RandomRotation(augment.rotation_degrees))
    if augment.brightness > 0 or augment.contrast > 0:
        steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    return v2.Compose(steps + _to_model_input(prep))


def eval_preset(prep: Preprocessing) -> v2.Compose:
    """Centre crop of a (1, S, S) uint8 tensor -> (3, image_size, image_size) float."""
    return v2.Compose([v2.CenterCrop(prep.image_size)] + _to_model_input(prep))


def display_preset(prep: Preprocessing, augment: AugmentConfig) -> v2.Compose:
    """The train preset without the final normalisation: (1, image_size, image_size) uint8 views to look at."""
    return v2.Compose(train_preset(prep, augment).transforms[:-3])
