"""An exponential moving average of the weights (and BatchNorm statistics), updated after every optimizer step.

From scratch, the weights of one step still swing with the last few batches; their average over the last few
hundred steps generalises better and does not wobble from epoch to epoch. Training validates, selects and saves
the average when `train.ema_decay` > 0 (as torchvision's classification reference does with --model-ema).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the live weights: avg += (1 - d) * (live - avg)."""
        self.updates += 1
        # Warmup: the early average would otherwise be dominated by the random initial weights.
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats = [(avg, live) for avg, live in self._pairs if avg.dtype.is_floating_point]
        torch._foreach_lerp_([avg for avg, _ in floats], [live for _, live in floats], 1.0 - decay)
        for avg, live in self._pairs:
            if not avg.dtype.is_floating_point:  # BatchNorm's num_batches_tracked
                avg.copy_(live)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "weights": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["weights"])
