"""Training throughput at 224 px on a real dataset: a seed-style loop against the project's loop, in one run.

    python benchmarks/train_throughput.py [--dataset DIR] [--images N] [--variants freeze=layer3 ...]

(a) seed-style: torchvision ImageFolder, PIL decode + RandomResizedCrop every epoch, fp32, NCHW, batch 4, SGD.
(b) project: `braintumor.training.fit` with params.yaml's train/augment settings at 224 px (resize 256), reading
    the decoded-scan cache (built once, timed separately: it is reused by every later epoch and run).
Both train a from-scratch ResNet50 (weights do not change the cost) on the same N Training images, one pass.

Last line: baseline=<img/s> project=<img/s> ratio=<x> peak_rss_gb=<g>
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

from braintumor.config import load_params
from braintumor.data.cache import cached_squares
from braintumor.data.scan import scan_dataset
from braintumor.model import build_model
from braintumor.training import TrainData, fit
from braintumor.transforms import Preprocessing

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "brain-tumor-mri"


def seed_style(dataset: Path, images: int) -> float:
    """The seed notebook's loop: decode and augment with PIL every epoch, fp32 NCHW, batch 4."""
    tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406],
                                                                         [0.229, 0.224, 0.225])])
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


def project(dataset: Path, images: int, cache: Path, overrides: dict) -> tuple[float, float]:
    """The project's loop with params.yaml's settings at 224 px. Returns (img/s, cache build seconds)."""
    params = load_params(REPO / "params.yaml")
    model_cfg = dataclasses.replace(params.model, image_size=224, resize_size=256, weights="none")
    train_cfg = dataclasses.replace(params.train, epochs=1, warmup_epochs=0, device="cpu", **overrides)
    files = scan_dataset(dataset, params.data.classes, {"notumor": "no_tumor", **params.data.aliases}).files
    train = [f for f in files if f.split == "train"]
    picks = [train[i] for i in np.random.default_rng(0).permutation(len(train))[:images + 8]]
    import pandas as pd

    frame = pd.DataFrame({"path": [f.relpath for f in picks], "sha256": [f.relpath for f in picks],
                          "label": [f.label for f in picks]})
    start = time.perf_counter()
    squares = cached_squares(frame, dataset, 256, cache, max_pixels=params.data.max_image_pixels, progress=False)
    cache_seconds = time.perf_counter() - start
    labels = frame["label"].map({c: i for i, c in enumerate(params.data.classes)}).to_numpy()
    # The last 8 images are a token val set: fit() validates every epoch; its time is not in images_per_s.
    data = TrainData(squares[:images], labels[:images], squares[images:], labels[images:], params.data.classes)
    result = fit(build_model("none", len(params.data.classes)), data, train_cfg, params.augment,
                 Preprocessing.from_config(model_cfg), checkpoint_path=cache / f"ckpt-{sorted(overrides.items())}.pt", progress=False)
    return result.history[0].images_per_s, cache_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT)
    parser.add_argument("--images", type=int, default=96, help="Training images per loop (default 96)")
    parser.add_argument("--variants", nargs="*", default=["freeze=layer3", "freeze=backbone"],
                        help="extra project runs with train.* overrides, e.g. freeze=layer3 batch_size=64")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.images} images at 224 px")
    baseline = seed_style(args.dataset, args.images)
    print(f"seed-style loop (batch 4, fp32, NCHW, PIL every epoch): {baseline:.2f} img/s")
    with tempfile.TemporaryDirectory() as tmp:
        default, cache_seconds = project(args.dataset, args.images, Path(tmp), {})
        print(f"project loop, params.yaml defaults: {default:.2f} img/s "
              f"(one-off decode cache: {cache_seconds:.1f} s for {args.images + 8} scans)")
        for variant in args.variants:
            key, value = variant.split("=", 1)
            typed = int(value) if value.isdigit() else {"true": True, "false": False}.get(value.lower(), value)
            speed, _ = project(args.dataset, args.images, Path(tmp), {key: typed})
            print(f"project loop, train.{key}={value}: {speed:.2f} img/s ({speed / baseline:.1f}x seed-style)")
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024**2
    print(f"baseline={baseline:.2f} project={default:.2f} ratio={default / baseline:.2f} peak_rss_gb={peak:.2f}")


if __name__ == "__main__":
    main()
