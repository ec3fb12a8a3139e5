"""GPU check: the project's training loop on a CUDA card, with only torch and torchvision (plus numpy/PIL).

Trains a ResNet50 at 224 px, batch 256, AMP + channels_last, on synthetic MRI-like scans from the built-in
sample generator, for a few hundred steps, and reports images/s and whether the loss fell. Run through
benchmarks/gpu_check.sh, which puts src/ on PYTHONPATH (no install, no mlflow, no dvc needed).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from braintumor.config import AugmentConfig, TrainConfig
from braintumor.data.sample import synthetic_slice
from braintumor.model.network import build_model
from braintumor.model.transforms import Preprocessing
from braintumor.scans.preprocess import ScanPrep, prepare_image
from braintumor.training.loop import TrainData, fit

KINDS = ("glioma", "meningioma", "none", "pituitary")
SCAN = ScanPrep(size=224, head_crop=True, intensity="percentile")  # the GPU recipe's preprocessing


def _make(i: int) -> np.ndarray:
    return prepare_image(synthetic_slice(np.random.default_rng(i), KINDS[i % 4], size=256), SCAN)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unique", type=int, default=2048, help="distinct synthetic scans (tiled to --images)")
    parser.add_argument("--images", type=int, default=16384, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    card = torch.cuda.get_device_name(0)
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        unique = np.stack(list(pool.map(_make, range(args.unique), chunksize=32)))  # (U, 256, 256) uint8
    labels = np.arange(args.unique) % 4
    reps = -(-args.images // args.unique)
    train_x, train_y = np.tile(unique, (reps, 1, 1))[: args.images], np.tile(labels, reps)[: args.images]
    data = TrainData(train_x, train_y, unique[:512], labels[:512], list(KINDS))
    print(
        f"gpu_check: {card}, torch {torch.__version__}; {args.unique} synthetic scans made in "
        f"{time.perf_counter() - start:.1f} s"
    )
    cfg = TrainConfig(
        device="cuda",
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-5,
        scheduler="cosine",
        warmup_epochs=1,
        num_workers=args.workers,
        amp=True,
        channels_last=True,
        compile=args.compile,
    )
    result = fit(
        build_model("none", 4),
        data,
        cfg,
        AugmentConfig(),
        Preprocessing(scan=SCAN, image_size=224),
        checkpoint_path=f"/tmp/gpu_check_{time.time_ns()}.pt",
        progress=False,
    )
    speeds = [s.images_per_s for s in result.history]
    steady = float(np.median(speeds[1:])) if len(speeds) > 1 else speeds[0]
    losses = [s.train_loss for s in result.history]
    steps = len(result.history) * (args.images // args.batch_size)
    dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    print(
        f"gpu_check: card={card.replace(' ', '_')} steps={steps} batch={args.batch_size} amp={dtype} "
        f"channels_last=True img_s={steady:.0f} first_epoch_img_s={speeds[0]:.0f} "
        f"loss_first={losses[0]:.3f} loss_last={losses[-1]:.3f} loss_fell={losses[-1] < losses[0]} "
        f"val_acc_last={result.history[-1].val_accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
