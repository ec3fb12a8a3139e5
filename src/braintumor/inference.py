"""Batched inference: class probabilities for a loader of (image, label) batches."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from braintumor.runtime import autocast


@torch.no_grad()
def predict_probs(model: nn.Module, batches, device: torch.device, transform, *,
                  amp_dtype: torch.dtype | None = None, tta_hflip: bool = False,
                  channels_last: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns (probs (N, C) float64, labels (N,), mean cross-entropy). Model must be in eval mode.

    batches yield (uint8 squares (B, 1, S, S), labels); `transform` (the eval preset) runs on `device`.
    """
    probs, labels, loss_sum = [], [], 0.0
    for squares, targets in batches:
        images = transform(squares.to(device, non_blocking=True))  # (B, 3, H, W)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = torch.as_tensor(targets).to(device)
        with autocast(device, amp_dtype):
            logits = model(images).float()  # (B, C)
            if tta_hflip:  # average the logits of the scan and its mirror image
                logits = (logits + model(torch.flip(images, dims=[3])).float()) / 2
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        probs.append(torch.softmax(logits.double(), dim=1).cpu())  # float64: rows sum to 1 to 1e-12
        labels.append(targets.cpu())
    if not probs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), float("nan")
    all_labels = torch.cat(labels).numpy()
    return torch.cat(probs).numpy(), all_labels, loss_sum / max(1, len(all_labels))
