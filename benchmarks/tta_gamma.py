"""Does averaging each prediction over gamma-shifted views of the scan help on scans from another source?
One model file, with and without the gamma views, side by side, on val alone.

    python benchmarks/tta_gamma.py --model runs/r11/model.pt [--gamma 1.5]

Views: the eval view at gamma 1/G, 1 and G (pixels in [0, 1] raised to that power before normalisation), each with
its mirror image when the model file says tta_hflip; their logits are averaged, as the mirror average does.
Printed, without and with the gamma views:
- macro-F1 on clean val, and on the six intensity-shifted copies of val that `train.calibration: shifted` fits the
  temperature on (calibration.shift_copies(0)): val as another scanner might render it, the val-only stand-in for
  another source.
Testing is not scored: a recipe is chosen on val.
Last line: `tta_gamma val_f1 A->B shifted_f1 C->D`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from shifted_val import val_sets
from torch import nn

from braintumor.config import load_params
from braintumor.model.transforms import Preprocessing


class GammaViews(nn.Module):
    """The network's logits averaged over a normalised batch at gamma 1/G, 1 and G."""

    def __init__(self, net: nn.Module, prep: Preprocessing, gamma: float) -> None:
        super().__init__()
        self.net, self.gammas = net, (1 / gamma, 1.0, gamma)
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x * self.std + self.mean).clamp(0.0, 1.0)  # back to [0, 1]
        views = [self.net(x if g == 1.0 else (pixels**g - self.mean) / self.std) for g in self.gammas]
        return torch.stack(views).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--params", default="params.yaml", help="where the manifest, data and cache are")
    parser.add_argument("--gamma", type=float, default=1.5)
    args = parser.parse_args()

    sets = val_sets(args.model, load_params(args.params))
    figures = {}
    for name, model in {"plain": sets.net, "gamma": GammaViews(sets.net, sets.prep, args.gamma)}.items():
        clean, shifted = sets.scores(model)
        figures[name] = (clean.macro_f1, float(np.mean(shifted)))
        print(
            f"{name}: val macro-F1 {clean.macro_f1:.4f}; shifted copies macro-F1 mean {np.mean(shifted):.4f} "
            f"({' '.join(f'{s:.3f}' for s in shifted)})",
            flush=True,
        )

    (a, b), (c, d) = figures["plain"], figures["gamma"]
    print(f"tta_gamma val_f1 {a:.4f}->{c:.4f} shifted_f1 {b:.4f}->{d:.4f}")


if __name__ == "__main__":
    main()
