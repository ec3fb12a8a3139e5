"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on val, so that softmax(logits / T) is calibrated.

A network trained with cross-entropy is usually over-confident; dividing its logits by T > 1 softens every
prediction alike. T changes no argmax, so accuracy and F1 stay exactly as they were; only the probabilities (and
with them log loss, ECE and any threshold a user sets) change. torch only: runs in the training core.

Fitted on val alone (`train.calibration: val`), T suits scans like the Training ones: on the public set, with label
smoothing, T < 1 sharpened the probabilities, which made the Testing scans (another source) worse calibrated.
`train.calibration: shifted` (the default) fits T on val together with copies of val through the train preset's
intensity augmentation at SHIFT_STRENGTHS times its strength (transforms.ShiftedPreset), after Tomani et al.,
"Post-hoc Uncertainty Calibration for Domain Drift Scenarios" (CVPR 2021): one T that holds from clean scans to
strongly shifted ones, so that a confident answer on another hospital's scan means what it says.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

T_RANGE = (0.05, 20.0)
SHIFT_STRENGTHS = (1.0, 2.0, 3.0)  # train.calibration: shifted; copies of val at these strengths, next to val itself
# Copies per strength (clean val counts as many times, so each of the four weighs alike). With one, T moved
# 0.934..0.971 over copy seeds on run 11's model (benchmarks/calibration_shift.py --seeds 6).
COPIES_PER_STRENGTH = 2


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in T_RANGE that minimises the mean negative log-likelihood of `labels` under softmax(logits / T).

    logits: (N, C), labels: (N,). Returns 1.0 when there is nothing to fit on.
    """
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_t.detach().exp())
    if not math.isfinite(fitted):
        return 1.0
    return min(max(fitted, T_RANGE[0]), T_RANGE[1])


def shift_copies(seed: int = 0) -> list[tuple[int, float]]:
    """(copy seed, strength) of each shifted copy of val: COPIES_PER_STRENGTH per strength in SHIFT_STRENGTHS."""
    strengths = [s for s in SHIFT_STRENGTHS for _ in range(COPIES_PER_STRENGTH)]
    return [(1000 * seed + copy, strength) for copy, strength in enumerate(strengths, start=1)]


def fitted_on(method: str) -> str:
    """What the temperature was fitted on, for the report and the model card (`method`: train.calibration)."""
    if method == "none":
        return "not fitted (train.calibration: none, T = 1)"
    if method == "shifted":
        return (
            f"fitted on val and {len(shift_copies())} copies of it through the train preset's intensity "
            f"augmentation, {COPIES_PER_STRENGTH} at each of {', '.join(f'{s:g}' for s in SHIFT_STRENGTHS)}x "
            "its strength (train.calibration: shifted)"
        )
    return "fitted on val (train.calibration: val)"
