"""Batched inference: the one place logits become probabilities (evaluation, validation, predict, serving).

The model file's `Inference` settings apply here: the mirror-image average (`tta_hflip`) and the temperature
fitted on val (`probabilities = softmax(logits / temperature)`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from braintumor.model.network import Inference
from braintumor.runtime import autocast


@dataclass
class Outputs:
    """What one pass over a set of scans gives, all on the CPU."""

    logits: torch.Tensor  # (N, C) float64
    labels: torch.Tensor  # (N,)
    features: torch.Tensor | None = None  # (N, D) float64: the classifier head's input, when asked for


@torch.no_grad()
def forward_outputs(
    model: nn.Module,
    batches,
    device: torch.device,
    transform,
    *,
    tta_hflip: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    features: bool = False,
) -> Outputs:
    """Logits (and with `features`, the penultimate features the `fc` head reads) of every scan; model in eval mode.

    batches yield (uint8 images (B, 1, S, S), labels); `transform` (the eval preset) runs on `device`. With
    `tta_hflip`, logits and features are each the mean over the scan and its mirror image.
    """
    captured: list[torch.Tensor] = []
    hook = None
    if features:  # the ResNet's `fc` (under DDP, its module's); other networks only need it when asked for
        head = getattr(model, "module", model).fc
        hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].float()))
    logits, labels, feats = [], [], []
    try:
        for batch, targets in batches:
            images = transform(batch.to(device, non_blocking=True))  # (B, 3, H, W)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            captured.clear()
            with autocast(device, amp_dtype):
                out = model(images).float()  # (B, C)
                if tta_hflip:  # average the logits of the scan and its mirror image
                    out = (out + model(torch.flip(images, dims=[3])).float()) / 2
            logits.append(out.double().cpu())  # float64: probabilities sum to 1 to 1e-12
            labels.append(torch.as_tensor(targets).cpu())
            if features:
                feats.append((sum(captured) / len(captured)).double().cpu())
    finally:
        if hook is not None:
            hook.remove()
    if not logits:
        return Outputs(
            torch.zeros((0, 0), dtype=torch.float64),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros((0, 0), dtype=torch.float64) if features else None,
        )
    return Outputs(torch.cat(logits), torch.cat(labels), torch.cat(feats) if features else None)


def predict_logits(
    model: nn.Module,
    batches,
    device: torch.device,
    transform,
    *,
    tta_hflip: bool = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logits (N, C) float64 on the CPU, labels (N,)): `forward_outputs` without features."""
    out = forward_outputs(
        model, batches, device, transform, tta_hflip=tta_hflip, amp_dtype=amp_dtype, channels_last=channels_last
    )
    return out.logits, out.labels


def predict_probs(
    model: nn.Module,
    batches,
    device: torch.device,
    transform,
    *,
    inference: Inference = Inference(),
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns (probs (N, C) float64, labels (N,), mean cross-entropy of those probabilities)."""
    logits, labels = predict_logits(
        model,
        batches,
        device,
        transform,
        tta_hflip=inference.tta_hflip,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
    )
    if len(labels) == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), float("nan")
    loss = float(F.cross_entropy(logits / inference.temperature, labels))
    return probabilities(logits, inference.temperature), labels.numpy(), loss


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """(N, C) logits -> (N, C) float64 probabilities, softmax(logits / temperature)."""
    return torch.softmax(logits.double() / temperature, dim=1).numpy()
