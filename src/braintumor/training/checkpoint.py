"""Per-epoch training checkpoints, written atomically so a kill at any moment leaves the previous one intact."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from braintumor import runtime
from braintumor.fileio import atomic_path

log = logging.getLogger(__name__)


def save_checkpoint(path: str | Path, *, model, optimizer, scheduler, scaler, ema, state, swa=None) -> None:
    """Everything a resumed run needs to continue exactly: weights, optimizer, schedule, EMA, weight average, RNGs,
    TrainState."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "swa": swa.state_dict() if swa is not None else None,
        "rng": runtime.rng_states(),
        "epoch": state.epoch,
        "best_f1": state.best_f1,
        "best_epoch": state.best_epoch,
        "best_state": state.best_state,
        "since_best": state.since_best,
        "history": [asdict(h) for h in state.history],
        "extra": state.extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None) -> dict[str, Any] | None:
    """The checkpoint at `path`, or None when there is none, or none to resume from (logged as a warning): it
    cannot be read, lacks keys (another version wrote it), or its weights do not fit `model`."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint from another version: start over rather than crash
        log.warning("ignoring unreadable checkpoint %s (%s); training starts from epoch 1", path, exc)
        return None
    problem = _problem(ckpt, model)
    if problem:
        log.warning("ignoring checkpoint %s: %s; training starts from epoch 1", path, problem)
        return None
    return ckpt


CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "ema",
    "rng",
    "epoch",
    "best_f1",
    "best_epoch",
    "best_state",
    "since_best",
    "history",
    "extra",
)


def _problem(ckpt: Any, model: torch.nn.Module | None) -> str | None:
    """Why this checkpoint cannot be resumed from, checked before anything is loaded from it; None when it can."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a checkpoint"
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        return f"it lacks {', '.join(missing)}"
    if not isinstance(ckpt["history"], list) or not all(isinstance(h, dict) for h in ckpt["history"]):
        return "its history is not a list of epochs"
    if model is not None:
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        saved = ckpt["model"] if isinstance(ckpt["model"], dict) else {}
        found = {name: tuple(getattr(t, "shape", ())) for name, t in saved.items()}
        if found != expected:
            return "its weights do not fit this network"
    return None


def checkpoint_extra(path: str | Path) -> dict[str, Any]:
    """What the caller stored with the checkpoint (e.g. the MLflow run id), without building a model."""
    ckpt = load_checkpoint(path)
    return dict(ckpt.get("extra", {})) if ckpt else {}
