"""The training loop. Imports neither mlflow nor dvc: it runs on a bare CUDA machine with torch and torchvision.

Per epoch, in order: set the lr phase -> forward -> loss -> backward -> (clip) -> step -> validate -> checkpoint
-> log. Resuming after a kill reloads the last checkpoint; on CPU with `train.deterministic`, an interrupted and
resumed run ends with the same metrics as an uninterrupted one (each epoch reseeds from (seed, epoch)).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from braintumor import runtime
from braintumor.progress import progress_bar
from braintumor.checkpoint import load_checkpoint, save_checkpoint
from braintumor.config import AugmentConfig, TrainConfig
from braintumor.data.cache import SquaresDataset
from braintumor.errors import BrainTumorError
from braintumor.inference import predict_probs
from braintumor.model import keep_frozen_in_eval, set_frozen
from braintumor.transforms import Preprocessing, eval_preset, train_preset

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    train_squares: np.ndarray  # (N, S, S) uint8
    train_labels: np.ndarray  # (N,) class indices
    val_squares: np.ndarray
    val_labels: np.ndarray
    classes: list[str]


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    images_per_s: float
    seconds: float


class EpochLogger(Protocol):
    def log_epoch(self, stats: EpochStats) -> None: ...


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    device: str
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        best = self.history[self.best_epoch - 1]
        speeds = [s.images_per_s for s in self.history if s.images_per_s > 0]
        return {"best_epoch": self.best_epoch, "best_val_accuracy": best.val_accuracy,
                "best_val_macro_f1": best.val_macro_f1, "epochs_run": len(self.history),
                "stopped_early": self.stopped_early,
                "train_images_per_s": float(np.median(speeds)) if speeds else 0.0}


def fit(model: nn.Module, data: TrainData, cfg: TrainConfig, augment: AugmentConfig, prep: Preprocessing, *,
        checkpoint_path: str | Path, logger: EpochLogger | None = None, extra: dict[str, Any] | None = None,
        dist_info: runtime.DistInfo = runtime.DistInfo(), progress: bool = True) -> TrainResult:
    """Train `model` on data.train_*, select the best epoch by val macro-F1, return its weights and the curves."""
    device = runtime.select_device(cfg.device, dist_info)
    runtime.configure(device, threads=cfg.threads, deterministic=cfg.deterministic)
    amp_dtype = runtime.autocast_dtype(device, amp=cfg.amp, cpu_bf16=cfg.cpu_bf16)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)

    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = {"epoch": 0, "best_f1": -1.0, "best_epoch": 0, "best_state": None, "history": [], "since_best": 0,
             "extra": dict(extra or {})}
    if _resume(checkpoint_path, state, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler):
        if dist_info.is_main:
            print(f"train: resuming from {checkpoint_path} after epoch {state['epoch']}")

    if dist_info.enabled and dist_info.is_main:
        print(f"train: DistributedDataParallel over {dist_info.world_size} processes "
              f"({dist.get_backend()}), batch {cfg.batch_size} per process")
    train_set = SquaresDataset(data.train_squares, data.train_labels)
    augment_batch, eval_batch = train_preset(prep, augment), eval_preset(prep)
    val_loader = _loader(SquaresDataset(data.val_squares, data.val_labels), cfg, device, shuffle=False)
    stopped_early = False
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        runtime.seed_everything(cfg.seed * 1000 + epoch)  # an epoch's randomness depends on (seed, epoch) only
        set_frozen(model, "backbone" if epoch <= cfg.head_only_epochs else cfg.freeze)
        net = _wrap(model, cfg, device, dist_info)
        loader = _train_loader(train_set, cfg, device, dist_info, epoch)
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        # Augmentation draws from its own generator, seeded by (seed, epoch, rank): resumable and per-process.
        draws = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1_000_003 * dist_info.rank)
        loss, acc, n_seen, t_train = _train_epoch(net, model, loader, lambda x: augment_batch(x, draws), optimizer,
                                                  scaler, cfg, device, amp_dtype, epoch, memory_format,
                                                  progress and dist_info.is_main)
        scheduler.step()
        val_loss, val_acc, val_f1 = _validate(model, val_loader, device, eval_batch, amp_dtype, cfg, data.classes)
        stats = EpochStats(epoch, loss, acc, val_loss, val_acc, val_f1, lr,
                           n_seen * dist_info.world_size / max(t_train, 1e-9), time.perf_counter() - t0)
        _record(state, stats, model)
        if dist_info.is_main:
            save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                            state=state, history=[asdict(h) for h in state["history"]])
            print(f"epoch {epoch}/{cfg.epochs}  train loss {loss:.4f} acc {acc:.3f} | val loss {val_loss:.4f} "
                  f"acc {val_acc:.3f} macro-F1 {val_f1:.3f} | lr {lr:.2e} | {stats.images_per_s:.1f} img/s"
                  + ("  *best" if state["best_epoch"] == epoch else ""))
            if logger is not None:
                logger.log_epoch(stats)
        if dist_info.enabled:
            dist.barrier()
        if cfg.patience and state["since_best"] >= cfg.patience:
            stopped_early = True
            if dist_info.is_main:
                print(f"train: early stop, no better val macro-F1 for {cfg.patience} epochs")
            break
    return TrainResult(best_state=state["best_state"], history=state["history"], best_epoch=state["best_epoch"],
                       stopped_early=stopped_early, device=str(device), extra=state["extra"])


def _resume(checkpoint_path, state: dict, **parts) -> bool:
    """Load the checkpoint into model/optimizer/scheduler/scaler and `state`; False when there is none."""
    ckpt = load_checkpoint(checkpoint_path)
    if ckpt is None:
        return False
    for name, part in parts.items():
        part.load_state_dict(ckpt[name])
    runtime.set_rng_states(ckpt["rng"])
    state.update({k: ckpt[k] for k in ("epoch", "best_f1", "best_epoch", "best_state", "since_best")})
    state["history"] = [EpochStats(**h) for h in ckpt["history"]]
    state["extra"] = {**ckpt.get("extra", {}), **state["extra"]}
    return True


def _validate(model, loader, device, transform, amp_dtype, cfg: TrainConfig, classes) -> tuple[float, float, float]:
    """(val loss, val accuracy, val macro-F1) on the val split."""
    probs, labels, loss = predict_probs(model.eval(), loader, device, transform, amp_dtype=amp_dtype,
                                        channels_last=cfg.channels_last)
    preds = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    accuracy = float((preds == labels).mean()) if len(labels) else float("nan")
    return loss, accuracy, macro_f1(labels, preds, len(classes))


def _record(state: dict, stats: EpochStats, model: nn.Module) -> None:
    """Append the epoch; keep a CPU copy of the weights when val macro-F1 improved (model selection on val)."""
    state["history"].append(stats)
    if stats.val_macro_f1 > state["best_f1"]:
        state.update(best_f1=stats.val_macro_f1, best_epoch=stats.epoch, since_best=0,
                     best_state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
    else:
        state["since_best"] += 1
    state["epoch"] = stats.epoch


def _train_epoch(net, model, loader, augment, optimizer, scaler, cfg, device, amp_dtype, epoch, memory_format,
                 progress):
    net.train()
    keep_frozen_in_eval(model)
    loss_sum, correct, seen = 0.0, 0, 0
    bar = progress_bar(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, disable=not progress)
    t0 = time.perf_counter()
    for batch, (squares, targets) in enumerate(bar, start=1):
        squares = squares.to(device, non_blocking=True)  # (B, 1, S, S) uint8
        images = augment(squares).contiguous(memory_format=memory_format)  # (B, 3, H, W) float, on device
        targets = targets.to(device, non_blocking=True)  # (B,)
        with runtime.autocast(device, amp_dtype):
            logits = net(images)  # (B, C)
            loss = nn.functional.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
        value = loss.item()
        if not math.isfinite(value):
            raise BrainTumorError(
                f"training diverged: the loss became {value} at epoch {epoch}, batch {batch}. The last good "
                "checkpoint and model are kept. Lower train.lr, set train.grad_clip (e.g. 1.0), or check the data.")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        loss_sum += value * len(targets)
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(targets)
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    return loss_sum / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - t0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 (0 for a class never predicted nor present), as scikit-learn's
    f1_score(average="macro", labels=range(n_classes), zero_division=0). numpy only: the core needs no sklearn."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((y_pred == c) & (y_true == c))
        denominator = np.sum(y_pred == c) + np.sum(y_true == c)
        scores.append(2 * tp / denominator if denominator else 0.0)
    return float(np.mean(scores))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (or AdamW); no weight decay on norm weights and biases (the 1-D parameters)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_lambda(cfg: TrainConfig):
    """lr multiplier per epoch: `step` (x gamma every step_size epochs) or linear warmup then `cosine`."""
    def factor(epoch: int) -> float:
        if epoch < cfg.warmup_epochs:
            return (epoch + 1) / (cfg.warmup_epochs + 1)
        if cfg.scheduler == "step":
            return cfg.gamma ** ((epoch - cfg.warmup_epochs) // cfg.step_size)
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / span))
    return factor


def _wrap(model: nn.Module, cfg: TrainConfig, device: torch.device, dist_info: runtime.DistInfo) -> nn.Module:
    net = model
    if dist_info.enabled:  # rewrapped each epoch: the set of trainable parameters may change (head-only epochs)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=False)
    if cfg.compile:
        net = torch.compile(net)
    return net


def _train_loader(dataset, cfg: TrainConfig, device, dist_info: runtime.DistInfo, epoch: int) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    if dist_info.enabled:
        sampler = DistributedSampler(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    # drop_last: a trailing batch of 1 breaks BatchNorm; keep it only when the whole set is one short batch.
    drop_last = len(dataset) // dist_info.world_size > cfg.batch_size
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      pin_memory=cfg.pin_memory and device.type == "cuda", drop_last=drop_last,
                      generator=generator, persistent_workers=False)


def _loader(dataset, cfg: TrainConfig, device, *, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.batch_size * 2, shuffle=shuffle, num_workers=cfg.num_workers,
                      pin_memory=cfg.pin_memory and device.type == "cuda")
