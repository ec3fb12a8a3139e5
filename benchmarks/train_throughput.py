"""Training throughput on a real dataset: a seed-style loop, the machine's limit and the project's loop, in one run.

    python benchmarks/train_throughput.py [--dataset DIR] [--images N] [--size 224] [--variants freeze=layer3 ...]

(a) seed-style: torchvision ImageFolder, PIL decode + RandomResizedCrop every epoch, fp32, NCHW, batch 4, SGD.
(b) limit: a bare loop on synthetic tensors (no data, no augmentation), batch 32, channels_last, in the precision
    `train.cpu_bf16: auto` picks on this CPU (bf16 with AMX / AVX512-BF16, else fp32): what this machine can do.
(c) project: `braintumor.training.loop.fit` with params.yaml's preprocess/augment/train settings at --size px, reading
    the prepared-scan cache (built once, timed separately: it is reused by every later epoch and run).
All train a from-scratch ResNet50 (weights do not change the cost) on the same N Training images, one pass.

Last line: baseline=<img/s> limit=<img/s> project=<img/s> ratio=<project/baseline> of_limit=<project/limit>
precision=<fp32|bf16> peak_rss_gb=<g>
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision import datasets, transforms

from braintumor import runtime
from braintumor.config import load_params
from braintumor.data.cache import cached_images
from braintumor.data.scan import scan_dataset
from braintumor.model.network import build_model
from braintumor.model.transforms import Preprocessing
from braintumor.scans.limits import ImageLimits
from braintumor.training.loop import TrainData, fit

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "brain-tumor-mri"


def seed_style(dataset: Path, images: int, size: int) -> float:
    """The seed notebook's loop: decode and augment with PIL every epoch, fp32 NCHW, batch 4."""
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    folder = datasets.ImageFolder(dataset / "Training", tf)
    subset = torch.utils.data.Subset(folder, np.random.default_rng(0).permutation(len(folder))[:images].tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=4, shuffle=True, num_workers=0)
    model = build_model("none", len(folder.classes))
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    seen, start = 0, time.perf_counter()
    for inputs, labels in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs), labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def bare_limit(size: int, steps: int = 6, batch: int = 32) -> tuple[float, str]:
    """Forward, backward and AdamW step on random tensors in the precision cpu_bf16=auto picks. (img/s, precision)."""
    device = torch.device("cpu")
    dtype = runtime.autocast_dtype(device, amp=True, cpu_bf16="auto")
    model = build_model("none", 4).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 4, (batch,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with runtime.autocast(device, dtype):
            loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return batch / float(np.median(times[1:])), runtime.precision_name(dtype)  # the first step warms up


def project(dataset: Path, images: int, cache: Path, overrides: dict, size: int) -> tuple[float, float]:
    """The project's loop with params.yaml's settings at `size` px. Returns (img/s, cache build seconds)."""
    params = load_params(REPO / "params.yaml")
    model_cfg = dataclasses.replace(params.model, image_size=size, resize_size=size, weights="none")
    train_cfg = dataclasses.replace(params.train, epochs=1, warmup_epochs=0, device="cpu", **overrides)
    files = scan_dataset(dataset, params.data.classes, {"notumor": "no_tumor", **params.data.aliases}).files
    train = [f for f in files if f.split == "train"]
    picks = [train[i] for i in np.random.default_rng(0).permutation(len(train))[: images + 8]]
    import pandas as pd

    frame = pd.DataFrame(
        {"path": [f.relpath for f in picks], "sha256": [f.relpath for f in picks], "label": [f.label for f in picks]}
    )
    start = time.perf_counter()
    scan = Preprocessing.from_config(model_cfg, params.preprocess).scan
    cached = cached_images(frame, dataset, scan, cache, limits=ImageLimits.of(params.data), progress=False)
    cache_seconds = time.perf_counter() - start
    labels = frame["label"].map({c: i for i, c in enumerate(params.data.classes)}).to_numpy()
    # The last 8 images are a token val set: fit() validates every epoch; its time is not in images_per_s.
    data = TrainData(cached[:images], labels[:images], cached[images:], labels[images:], params.data.classes)
    result = fit(
        build_model("none", len(params.data.classes)),
        data,
        train_cfg,
        params.augment,
        Preprocessing.from_config(model_cfg, params.preprocess),
        checkpoint_path=cache / f"ckpt-{sorted(overrides.items())}.pt",
        progress=False,
    )
    return result.history[0].images_per_s, cache_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT)
    parser.add_argument("--images", type=int, default=96, help="Training images per loop (default 96)")
    parser.add_argument("--size", type=int, default=224, help="network input size in px (default 224)")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["freeze=layer3", "freeze=backbone"],
        help="extra project runs with train.* overrides, e.g. freeze=layer3 batch_size=64",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images at {args.size} px, "
        f"CPU bf16 instructions: {runtime.cpu_has_fast_bf16()}"
    )
    baseline = seed_style(args.dataset, args.images, args.size)
    print(f"seed-style loop (batch 4, fp32, NCHW, PIL every epoch): {baseline:.2f} img/s")
    limit, precision = bare_limit(args.size)
    print(f"bare loop on synthetic tensors ({precision}, batch 32, channels_last): {limit:.2f} img/s")
    with tempfile.TemporaryDirectory() as tmp:
        default, cache_seconds = project(args.dataset, args.images, Path(tmp), {}, args.size)
        print(
            f"project loop, params.yaml: {default:.2f} img/s = {default / limit:.2f} of the limit "
            f"(one-off preprocessing cache: {cache_seconds:.1f} s for {args.images + 8} scans)"
        )
        for variant in args.variants:
            key, value = variant.split("=", 1)
            typed = int(value) if value.isdigit() else {"true": True, "false": False}.get(value.lower(), value)
            speed, _ = project(args.dataset, args.images, Path(tmp), {key: typed}, args.size)
            print(f"project loop, train.{key}={value}: {speed:.2f} img/s ({speed / baseline:.1f}x seed-style)")
    peak = (
        max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        / 1024**2
    )
    print(
        f"baseline={baseline:.2f} limit={limit:.2f} project={default:.2f} ratio={default / baseline:.2f} "
        f"of_limit={default / limit:.2f} precision={precision} peak_rss_gb={peak:.2f}"
    )


if __name__ == "__main__":
    main()
