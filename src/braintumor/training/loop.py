"""The training loop. Imports neither mlflow nor dvc: it runs on a bare CUDA machine with torch and torchvision.

Per step, in order: augment -> forward -> loss -> backward -> (clip) -> optimizer step -> lr step -> (EMA update)
-> (weight average, in the last `swa_epochs`); per epoch: validate -> checkpoint -> log; with `swa_epochs`, at the
end: batch-norm statistics of the average -> validate it. Resuming after a kill reloads the last checkpoint; on CPU
with `train.deterministic`, an interrupted and resumed run ends with the same metrics as an uninterrupted one (each
epoch reseeds from (seed, epoch)).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, update_bn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from braintumor import runtime
from braintumor.config import AugmentConfig, TrainConfig
from braintumor.data.cache import ImageDataset
from braintumor.errors import BrainTumorError
from braintumor.evaluation.scores import macro_f1
from braintumor.model.inference import predict_probs
from braintumor.model.network import keep_frozen_in_eval, set_frozen
from braintumor.model.transforms import Preprocessing, eval_preset, mixup, train_preset
from braintumor.progress import progress_bar
from braintumor.training.checkpoint import load_checkpoint, save_checkpoint
from braintumor.training.ema import WeightEMA

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    train_images: np.ndarray  # (N, S, S) uint8
    train_labels: np.ndarray  # (N,) class indices
    val_images: np.ndarray
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
    def log_epoch(self, stats: EpochStats) -> None:
        """Record one epoch; called again with the checkpoint's epochs after a resume, so skip what it has."""


@dataclass
class WeightAverage:
    """The SWA model: its weights (CPU) and val figures, over the last `epochs` epochs."""

    state: dict[str, torch.Tensor]
    epochs: int
    steps: int
    val_loss: float
    val_accuracy: float
    val_macro_f1: float


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]  # the best epoch's weights
    history: list[EpochStats]
    best_epoch: int
    stopped_early: bool
    device: str
    precision: str  # what the forward pass ran in: fp32, bf16 or fp16
    average: WeightAverage | None = None  # with train.swa_epochs: the model to save

    @property
    def final_state(self) -> dict[str, torch.Tensor]:
        """The weights to save: the average when there is one, else the best epoch's."""
        return self.average.state if self.average is not None else self.best_state

    def summary(self) -> dict[str, Any]:
        best = self.history[self.best_epoch - 1]
        speeds = [s.images_per_s for s in self.history if s.images_per_s > 0]
        summary = {
            "best_epoch": self.best_epoch,
            "best_val_accuracy": best.val_accuracy,
            "best_val_macro_f1": best.val_macro_f1,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "train_images_per_s": float(np.median(speeds)) if speeds else 0.0,
        }
        if self.average is not None:
            summary.update(
                swa_epochs=self.average.epochs,
                swa_steps=self.average.steps,
                swa_val_loss=self.average.val_loss,
                swa_val_accuracy=self.average.val_accuracy,
                swa_val_macro_f1=self.average.val_macro_f1,
            )
        return summary


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights and optimizer: where training is and what it chose."""

    epoch: int = 0  # last finished epoch (1-based)
    best_f1: float = -1.0
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # CPU copy of the selected weights
    since_best: int = 0
    history: list[EpochStats] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # the caller's, e.g. the MLflow run id

    def record(self, stats: EpochStats, selected: nn.Module) -> None:
        """Append the epoch; keep a CPU copy of the weights when val macro-F1 improved (model selection on val)."""
        self.history.append(stats)
        if stats.val_macro_f1 > self.best_f1:
            self.best_f1, self.best_epoch, self.since_best = stats.val_macro_f1, stats.epoch, 0
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in selected.state_dict().items()}
        else:
            self.since_best += 1
        self.epoch = stats.epoch


@dataclass
class Step:
    """The parts of one optimization step, which the epoch loop needs together."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None
    swa: AveragedModel | None  # the equal average of the weights (train.swa_epochs)
    amp_dtype: torch.dtype | None
    grad_clip: float
    label_smoothing: float
    mixup: float  # train.mixup's alpha; 0 = off


def fit(
    model: nn.Module,
    data: TrainData,
    cfg: TrainConfig,
    augment: AugmentConfig,
    prep: Preprocessing,
    *,
    checkpoint_path: str | Path,
    logger: EpochLogger | None = None,
    extra: dict[str, Any] | None = None,
    dist_info: runtime.DistInfo = runtime.DistInfo(),
    progress: bool = True,
) -> TrainResult:
    """Train `model` on data.train_*, select the best epoch by val macro-F1, return its weights and the curves."""
    device = runtime.select_device(cfg.device, dist_info)
    runtime.configure(device, threads=cfg.threads, deterministic=cfg.deterministic)
    amp_dtype = runtime.autocast_dtype(device, amp=cfg.amp, cpu_bf16=cfg.cpu_bf16)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)

    train_set = ImageDataset(data.train_images, data.train_labels)
    steps_per_epoch = len(_train_loader(train_set, cfg, device, dist_info, epoch=1))
    optimizer = build_optimizer(model, cfg)
    step = Step(
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch)),
        torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        WeightEMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None,
        AveragedModel(model) if cfg.swa_epochs > 0 else None,
        amp_dtype,
        cfg.grad_clip,
        cfg.label_smoothing,
        cfg.mixup,
    )
    state = TrainState(extra=dict(extra or {}))
    if _resume(checkpoint_path, state, model, step) and dist_info.is_main:
        print(f"train: resuming from {checkpoint_path} after epoch {state.epoch}")
        if logger is not None:  # a kill between checkpoint and log lost the last epoch's metrics: log them again
            for stats in state.history:
                logger.log_epoch(stats)
    if dist_info.enabled and dist_info.is_main:
        print(
            f"train: DistributedDataParallel over {dist_info.world_size} processes "
            f"({dist.get_backend()}), batch {cfg.batch_size} per process"
        )
    augment_batch, eval_batch = train_preset(prep, augment), eval_preset(prep)
    val_loader = _loader(ImageDataset(data.val_images, data.val_labels), cfg, device, shuffle=False)
    selected = step.ema.model if step.ema else model  # what is validated, selected and saved
    stopped_early = False
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        runtime.seed_everything(cfg.seed * 1000 + epoch)  # an epoch's randomness depends on (seed, epoch) only
        set_frozen(model, "backbone" if epoch <= cfg.head_only_epochs else cfg.freeze)
        net = _wrap(model, cfg, device, dist_info)
        loader = _train_loader(train_set, cfg, device, dist_info, epoch)
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        # Augmentation draws from its own generator, seeded by (seed, epoch, rank): resumable and per-process.
        draws = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1_000_003 * dist_info.rank)
        bar = progress_bar(
            loader,
            desc=f"epoch {epoch}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=not (progress and dist_info.is_main),
        )
        average = step.swa if epoch > cfg.epochs - cfg.swa_epochs else None
        loss, acc, n_seen, t_train = train_one_epoch(
            net, model, bar, lambda x: augment_batch(x, draws), step, device, epoch, memory_format, draws, average
        )
        val_loss, val_acc, val_f1 = _validate(selected, val_loader, device, eval_batch, amp_dtype, cfg, data.classes)
        stats = EpochStats(
            epoch,
            loss,
            acc,
            val_loss,
            val_acc,
            val_f1,
            lr,
            n_seen * dist_info.world_size / max(t_train, 1e-9),
            time.perf_counter() - t0,
        )
        state.record(stats, selected)
        if dist_info.is_main:
            save_checkpoint(
                checkpoint_path,
                model=model,
                optimizer=optimizer,
                scheduler=step.scheduler,
                scaler=step.scaler,
                ema=step.ema,
                swa=step.swa,
                state=state,
            )
            print(
                f"epoch {epoch}/{cfg.epochs}  train loss {loss:.4f} acc {acc:.3f} | val loss {val_loss:.4f} "
                f"acc {val_acc:.3f} macro-F1 {val_f1:.3f} | lr {lr:.2e} | {stats.images_per_s:.1f} img/s"
                + ("  *best" if state.best_epoch == epoch else "")
            )
            if logger is not None:
                logger.log_epoch(stats)
        if dist_info.enabled:
            dist.barrier()
        if cfg.patience and state.since_best >= cfg.patience:
            stopped_early = True
            if dist_info.is_main:
                print(f"train: early stop, no better val macro-F1 for {cfg.patience} epochs")
            break
    average = None
    if step.swa is not None:
        _refit_batchnorm(step.swa, train_set, augment_batch, cfg, device, dist_info, memory_format)
        val_loss, val_acc, val_f1 = _validate(
            step.swa.module, val_loader, device, eval_batch, amp_dtype, cfg, data.classes
        )
        average = WeightAverage(
            {k: v.detach().to("cpu", copy=True) for k, v in step.swa.module.state_dict().items()},
            cfg.swa_epochs,
            int(step.swa.n_averaged),
            val_loss,
            val_acc,
            val_f1,
        )
        if dist_info.is_main:
            print(
                f"train: average of the weights over the last {average.epochs} epochs ({average.steps} steps): "
                f"val loss {val_loss:.4f} acc {val_acc:.3f} macro-F1 {val_f1:.3f} "
                f"(best epoch {state.best_epoch}: {state.best_f1:.3f})"
            )
    return TrainResult(
        best_state=state.best_state,
        history=state.history,
        best_epoch=state.best_epoch,
        stopped_early=stopped_early,
        device=str(device),
        precision=runtime.precision_name(amp_dtype),
        average=average,
    )


def _refit_batchnorm(
    swa: AveragedModel, train_set, augment_batch, cfg: TrainConfig, device, dist_info, memory_format
) -> None:
    """Batch-norm statistics for the averaged weights (their own, not any one step's): one pass over the train
    scans through the train preset, from fixed seeds (torch.optim.swa_utils.update_bn)."""
    draws = torch.Generator().manual_seed(cfg.seed * 1000 + cfg.epochs + 1 + 1_000_003 * dist_info.rank)
    loader = _train_loader(train_set, cfg, device, dist_info, epoch=cfg.epochs + 1)
    update_bn(
        (
            augment_batch(cached.to(device, non_blocking=True), draws).contiguous(memory_format=memory_format)
            for cached, _ in loader
        ),
        swa,
    )


def _resume(checkpoint_path, state: TrainState, model: nn.Module, step: Step) -> bool:
    """Load the checkpoint into the model, the step's parts and `state`; False when there is none to resume."""
    ckpt = load_checkpoint(checkpoint_path, model=model)  # None also when it cannot be resumed from
    if ckpt is None:
        return False
    try:  # before anything is loaded: what another version wrote starts over, never half-resumed
        history = [EpochStats(**h) for h in ckpt["history"]]
        if (step.ema is None) != (ckpt["ema"] is None):
            raise TypeError("weight EMA on one side only")
        ckpt.setdefault("swa", None)  # written before weight averaging existed: resumable without it
        if (step.swa is None) != (ckpt["swa"] is None):
            raise TypeError("weight averaging on one side only")
    except TypeError as exc:
        log.warning("ignoring checkpoint %s (%s); training starts from epoch 1", checkpoint_path, exc)
        return False
    model.load_state_dict(ckpt["model"])
    for name in ("optimizer", "scheduler", "scaler", "ema", "swa"):
        part = getattr(step, name)
        if part is not None:
            part.load_state_dict(ckpt[name])
    runtime.set_rng_states(ckpt["rng"])
    state.epoch, state.best_f1, state.best_epoch = ckpt["epoch"], ckpt["best_f1"], ckpt["best_epoch"]
    state.best_state, state.since_best = ckpt["best_state"], ckpt["since_best"]
    state.history = history
    state.extra = {**ckpt.get("extra", {}), **state.extra}
    return True


def _validate(model, loader, device, transform, amp_dtype, cfg: TrainConfig, classes) -> tuple[float, float, float]:
    """(val loss, val accuracy, val macro-F1) on the val split."""
    probs, labels, loss = predict_probs(
        model.eval(), loader, device, transform, amp_dtype=amp_dtype, channels_last=cfg.channels_last
    )
    preds = probs.argmax(1) if len(probs) else np.zeros(0, dtype=np.int64)
    accuracy = float((preds == labels).mean()) if len(labels) else float("nan")
    return loss, accuracy, macro_f1(labels, preds, len(classes))


def train_one_epoch(
    net: nn.Module,
    model: nn.Module,
    batches,
    augment,
    step: Step,
    device: torch.device,
    epoch: int,
    memory_format,
    draws: torch.Generator | None = None,
    average: AveragedModel | None = None,
) -> tuple[float, float, int, float]:
    """One pass over `batches`: (mean train loss, train accuracy, scans seen, seconds).

    With mixup (step.mixup > 0, its draws from `draws`) the loss and the accuracy weigh both labels of a blend.
    With `average`, the weights after each step are added to it."""
    net.train()
    keep_frozen_in_eval(model)
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    for batch, (cached, targets) in enumerate(batches, start=1):
        cached = cached.to(device, non_blocking=True)  # (B, 1, S, S) uint8, as the cache holds them
        images = augment(cached).contiguous(memory_format=memory_format)  # (B, 3, H, W) float, on device
        targets = targets.to(device, non_blocking=True)  # (B,)
        partner, lam = targets, 1.0
        if step.mixup > 0:
            images, order, lam = mixup(images, step.mixup, draws)
            partner = targets[order]
        with runtime.autocast(device, step.amp_dtype):
            logits = net(images)  # (B, C)
            loss = lam * nn.functional.cross_entropy(logits.float(), targets, label_smoothing=step.label_smoothing)
            if lam < 1.0:
                loss = loss + (1 - lam) * nn.functional.cross_entropy(
                    logits.float(), partner, label_smoothing=step.label_smoothing
                )
        value = loss.item()
        if not math.isfinite(value):
            raise BrainTumorError(
                f"training diverged: the loss became {value} at epoch {epoch}, batch {batch}. The last good "
                "checkpoint and model are kept. Lower train.lr, set train.grad_clip (e.g. 1.0), or check the data."
            )
        step.optimizer.zero_grad(set_to_none=True)
        step.scaler.scale(loss).backward()
        if step.grad_clip > 0:
            step.scaler.unscale_(step.optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
        step.scaler.step(step.optimizer)
        step.scaler.update()
        step.scheduler.step()  # the schedule is per step: warmup and cosine move smoothly within an epoch
        if step.ema is not None:
            step.ema.update()
        if average is not None:
            average.update_parameters(model)
        loss_sum += value * len(targets)
        predicted = logits.argmax(1)
        correct += lam * int((predicted == targets).sum()) + (1 - lam) * int((predicted == partner).sum())
        seen += len(targets)
        if hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}")
    return loss_sum / max(seen, 1), correct / max(seen, 1), seen, time.perf_counter() - t0


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (or AdamW); no weight decay on norm weights and biases (the 1-D parameters)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """lr multiplier per optimizer step: linear warmup over `warmup_epochs`, then `step` (x gamma every step_size
    epochs) or `cosine` (to zero at the last step)."""
    warmup_steps = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        epochs_after_warmup = (step - warmup_steps) / steps_per_epoch
        if cfg.scheduler == "step":
            return cfg.gamma ** (int(epochs_after_warmup) // cfg.step_size)
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, epochs_after_warmup / span)))

    return factor


def _wrap(model: nn.Module, cfg: TrainConfig, device: torch.device, dist_info: runtime.DistInfo) -> nn.Module:
    net = model
    if dist_info.enabled:  # rewrapped each epoch: the set of trainable parameters may change (head-only epochs)
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )
    if cfg.compile:
        net = torch.compile(net)
    return net


def _train_loader(dataset, cfg: TrainConfig, device, dist_info: runtime.DistInfo, epoch: int) -> DataLoader:
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    if dist_info.enabled:
        sampler = DistributedSampler(
            dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    # drop_last: a trailing batch of 1 breaks BatchNorm; keep it only when the whole set is one short batch.
    drop_last = len(dataset) // dist_info.world_size > cfg.batch_size
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory and device.type == "cuda",
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )


def _loader(dataset, cfg: TrainConfig, device, *, shuffle: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size * 2,
        shuffle=shuffle,
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory and device.type == "cuda",
    )
