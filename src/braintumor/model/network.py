"""The ResNet50 factory and the model file (`models/model.pt`) that evaluation, prediction and serving load."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet50_Weights, resnet50

from braintumor.errors import BrainTumorError, ConfigError
from braintumor.fileio import atomic_path
from braintumor.model.transforms import Preprocessing

log = logging.getLogger(__name__)

# Backbone parts in forward order; `train.freeze: layer2` freezes the stem, layer1 and layer2.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
# 2: head crop and intensity settings in "preprocessing", temperature and TTA in "inference"; "novelty" (the
# novelty score, novelty.py) is optional: files without it still load, and only lack the score.
MODEL_FORMAT = 2
READABLE_FORMATS = (1, 2)


def build_model(weights: str, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """torchvision ResNet50 with the `fc` layer replaced by a `num_classes` head.

    weights: "imagenet" (torchvision's IMAGENET1K_V2, downloaded once to the torch cache), "none", or the path of
    a local ResNet50 state dict (loaded with weights_only=True; its `fc` is dropped).
    """
    if weights == "imagenet":
        model = resnet50(weights=_imagenet_weights())
    else:
        # From scratch, each residual block starts as the identity (zero-init last BN): trains stably from step 1.
        model = resnet50(weights=None, zero_init_residual=weights == "none")
        if weights != "none":
            model.load_state_dict(_local_state_dict(weights), strict=False)
    model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
    return model


def _imagenet_weights() -> ResNet50_Weights:
    weights = ResNet50_Weights.IMAGENET1K_V2
    try:
        weights.get_state_dict(progress=True, check_hash=True)  # downloads once, then reads the torch cache
    except Exception as exc:  # URLError, timeouts, hash mismatch: never fall back to random weights silently
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise BrainTumorError(
            f"could not get the ImageNet weights ({type(exc).__name__}: {exc}).\n"
            f"  Either download {weights.url}\n  on a machine with internet and put it at {cache},\n"
            "  or set model.weights to the path of a local ResNet50 state dict,\n"
            "  or set model.weights: none to train from scratch (much lower accuracy on real scans)."
        ) from None
    return weights


def _local_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ConfigError(
            f"model.weights = {path!r}: no such file. Give the path of a ResNet50 state dict "
            "(.pt/.pth), or 'imagenet' or 'none'."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"model.weights = {path!r} cannot be loaded as a state dict ({type(exc).__name__}: {exc})"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(k.startswith("layer4.") for k in state):
        raise ConfigError(f"model.weights = {path!r} is not a ResNet50 state dict (no layer4.* keys)")
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def backbone_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    return {"stem": [model.conv1, model.bn1], **{name: [getattr(model, name)] for name in STAGES[1:]}}


def set_frozen(model: nn.Module, freeze: str) -> None:
    """Freeze nothing ("none"), the whole backbone ("backbone") or everything up to a named stage, included.

    Frozen parts also keep their BatchNorm statistics (see `keep_frozen_in_eval`).
    """
    upto = len(STAGES) if freeze == "backbone" else (STAGES.index(freeze) + 1 if freeze in STAGES else 0)
    parts = backbone_parts(model)
    for i, name in enumerate(STAGES):
        for module in parts[name]:
            module.requires_grad_(i >= upto)


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Call after model.train(): BatchNorm layers whose parameters are frozen stop updating running stats."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) and not module.weight.requires_grad:
            module.eval()


@dataclass(frozen=True)
class Inference:
    """How the network's logits become the probabilities every stage reports; saved in the model file."""

    temperature: float = 1.0  # probabilities = softmax(logits / temperature), fitted after training (calibration.py)
    tta_hflip: bool = False  # logits averaged over the scan and its mirror image
    calibration: str = "val"  # how the temperature was fitted: train.calibration (val | shifted | none)

    @classmethod
    def from_dict(cls, spec: dict | None) -> Inference:
        spec = spec or {}  # model files before train.calibration fitted T on val
        return cls(
            temperature=float(spec.get("temperature", 1.0)),
            tta_hflip=bool(spec.get("tta_hflip", False)),
            calibration=str(spec.get("calibration", "val")),
        )


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    classes: list[str],
    preprocessing: Preprocessing,
    params: dict[str, Any],
    metrics: dict[str, Any],
    inference: Inference = Inference(),
    novelty: dict[str, Any] | None = None,
) -> None:
    """`novelty`: novelty.Novelty.to_dict() of the fitted score, or None (no score)."""
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    bundle = {
        "format": MODEL_FORMAT,
        "arch": "resnet50",
        "state_dict": state,
        "classes": list(classes),
        "preprocessing": preprocessing.to_dict(),
        "inference": asdict(inference),
        "params": params,
        "metrics": metrics,
        "novelty": novelty,
    }
    with atomic_path(path) as tmp:
        torch.save(bundle, tmp)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained network from a model file. Returns (model in eval mode, bundle without weights)."""
    path = Path(path)
    if not path.is_file():
        raise BrainTumorError(f"model file {path} not found. Train one first: `dvc repro train`.")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BrainTumorError(f"{path} is not a model file written by this project ({type(exc).__name__}: {exc})")
    if not isinstance(bundle, dict) or bundle.get("format") not in READABLE_FORMATS:
        raise BrainTumorError(
            f"{path} is not a model file written by this project (format {' or '.join(map(str, READABLE_FORMATS))})."
        )
    model = build_model("none", len(bundle["classes"]))
    model.load_state_dict(bundle.pop("state_dict"))
    model.to(device).eval()
    return model, bundle


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel
