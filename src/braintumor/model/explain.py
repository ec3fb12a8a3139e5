"""Grad-CAM (Selvaraju et al., 2017): where in the scan the evidence for a class lies."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def grad_cam(
    model: nn.Module, layer: nn.Module, image: torch.Tensor, target: int | None = None
) -> tuple[np.ndarray, int]:
    """Heat map in [0, 1] of shape (H, W) for one image (1, C, H, W), and the class it explains.

    Weights each channel of `layer`'s output by the mean gradient of the class score over it, sums the channels,
    keeps the positive part and upsamples to the image size. For ResNet50 pass `model.layer4`.
    """
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.register_hook(lambda grad: captured.__setitem__("grad", grad))
        captured["act"] = output

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            image = image.detach().requires_grad_(True)
            logits = model(image)  # (1, classes)
            target = int(logits.argmax(1)) if target is None else int(target)
            model.zero_grad(set_to_none=True)
            logits[0, target].backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = captured["act"].detach(), captured["grad"].detach()  # (1, K, h, w) each
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (1, K, 1, 1)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))  # (1, 1, h, w)
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    peak = float(cam.max())
    return (cam / peak if peak > 0 else cam).cpu().numpy(), target


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) uint8 scan + (H, W) heat map in [0, 1] -> (H, W, 3) uint8 picture (jet colour map)."""
    from matplotlib import colormaps

    heat = colormaps["jet"](cam)[..., :3]  # (H, W, 3) in [0, 1]
    base = np.repeat(gray[..., None] / 255.0, 3, axis=2)
    return (np.clip((1 - alpha) * base + alpha * heat, 0, 1) * 255).astype(np.uint8)
