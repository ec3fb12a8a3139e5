"""Temperature scaling (Guo et al., 2017): one scalar T, fitted on val, so that softmax(logits / T) is calibrated.

A network trained with cross-entropy is usually over-confident; dividing its logits by T > 1 softens every
prediction alike. T changes no argmax, so accuracy and F1 stay exactly as they were; only the probabilities (and
with them log loss, ECE and any threshold a user sets) change. torch only: runs in the training core.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

T_RANGE = (0.05, 20.0)


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
