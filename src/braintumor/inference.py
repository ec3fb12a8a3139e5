"""Batched inference: the one place logits become probabilities (evaluation, validation, predict, serving).

The model file's `Inference` settings apply here: the mirror-image average (`tta_hflip`) and the temperature
fitted on val (`probabilities = softmax(logits / temperature)`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from braintumor.model import Inference
from braintumor.runtime import autocast


@torch.no_grad()
def predict_logits(model: nn.Module, batches, device: torch.device, transform, *, tta_hflip: bool = False,
                   amp_dtype: torch.dtype | None = None,
                   channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logits (N, C) float64 on the CPU, labels (N,)). Model must be in eval mode.

    batches yield (uint8 images (B, 1, S, S), labels); `transform` (the eval preset) runs on `device`.
    """
    logits, labels = [], []
    for batch, targets in batches:
        images = transform(batch.to(device, non_blocking=True))  # (B, 3, H, W)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            out = model(images).float()  # (B, C)
            if tta_hflip:  # average the logits of the scan and its mirror image
                out = (out + model(torch.flip(images, dims=[3])).float()) / 2
        logits.append(out.double().cpu())  # float64: probabilities sum to 1 to 1e-12
        labels.append(torch.as_tensor(targets).cpu())
    if not logits:
        return torch.zeros((0, 0), dtype=torch.float64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(labels)


def predict_probs(model: nn.Module, batches, device: torch.device, transform, *,
                  inference: Inference = Inference(), amp_dtype: torch.dtype | None = None,
                  channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns (probs (N, C) float64, labels (N,), mean cross-entropy of those probabilities)."""
    logits, labels = predict_logits(model, batches, device, transform, tta_hflip=inference.tta_hflip,
                                    amp_dtype=amp_dtype, channels_last=channels_last)
    if len(labels) == 0:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), float("nan")
    loss = float(F.cross_entropy(logits / inference.temperature, labels))
    return probabilities(logits, inference.temperature), labels.numpy(), loss


def probabilities(logits: torch.Tensor, temperature: float = 1.0) -> np.ndarray:
    """(N, C) logits -> (N, C) float64 probabilities, softmax(logits / temperature)."""
    return torch.softmax(logits.double() / temperature, dim=1).numpy()
