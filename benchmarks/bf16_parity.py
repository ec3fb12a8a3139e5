"""Does bf16 autocast on CPU train as well as fp32? The same short run twice, side by side.

    python benchmarks/bf16_parity.py [--dataset DIR] [--per-class 40] [--epochs 4] [--size 64]

Trains a from-scratch ResNet50 with params.yaml's recipe on the same scans, seed and epochs, once in fp32 and once
with `train.cpu_bf16: true`, and prints each epoch's val accuracy and loss for both, the speed ratio and whether
this CPU has bf16 instructions (AMX / AVX512-BF16; without them bf16 is emulated and slower, which is why
`cpu_bf16: auto` then picks fp32). --dataset takes a dataset in the project's layout; by default the built-in
synthetic sample is written to a temporary folder.

Last line: fp32_val_acc=<a> bf16_val_acc=<a> diff=<bf16 - fp32> speed_ratio=<bf16/fp32> cpu_bf16=<True|False>
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from braintumor import runtime
from braintumor.config import load_params
from braintumor.data.cache import cached_images
from braintumor.data.sample import write_sample_dataset
from braintumor.data.scan import scan_dataset
from braintumor.model.network import build_model
from braintumor.model.transforms import Preprocessing
from braintumor.scans.limits import ImageLimits
from braintumor.training.loop import TrainData, fit

REPO = Path(__file__).resolve().parents[1]


def train_data(dataset: Path, per_class: int, params, prep: Preprocessing, cache: Path) -> TrainData:
    """`per_class` Training scans of each class, a quarter of them held out as val (same split for both runs)."""
    files = [f for f in scan_dataset(dataset, params.data.classes, params.data.aliases).files if f.split == "train"]
    frame = pd.DataFrame({"path": [f.relpath for f in files], "label": [f.label for f in files]})
    frame = frame.sort_values("path", kind="stable").groupby("label", group_keys=False).head(per_class)
    frame = frame.reset_index(drop=True).assign(sha256=lambda f: f["path"])  # the cache keys on it
    images = cached_images(frame, dataset, prep.scan, cache, limits=ImageLimits.of(params.data))
    labels = frame["label"].map({c: i for i, c in enumerate(params.data.classes)}).to_numpy()
    is_val = np.arange(len(frame)) % 4 == 0
    return TrainData(images[~is_val], labels[~is_val], images[is_val], labels[is_val], params.data.classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    model_cfg = dataclasses.replace(params.model, weights="none", image_size=args.size, resize_size=args.size)
    prep = Preprocessing.from_config(model_cfg, params.preprocess)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU bf16 instructions: "
        f"{runtime.cpu_has_fast_bf16()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset
        if dataset is None:
            dataset = Path(tmp) / "data"
            write_sample_dataset(dataset, per_class=args.per_class, test_per_class=1, size=128, seed=0)
        data = train_data(dataset, args.per_class, params, prep, Path(tmp) / "cache")
        print(
            f"{len(data.train_labels)} train and {len(data.val_labels)} val scans at {args.size} px, "
            f"{args.epochs} epochs"
        )
        runs = {}
        for name, bf16 in (("fp32", False), ("bf16", True)):
            cfg = dataclasses.replace(params.train, device="cpu", epochs=args.epochs, cpu_bf16=bf16, deterministic=True)
            torch.manual_seed(0)
            result = fit(
                build_model("none", len(params.data.classes)),
                data,
                cfg,
                params.augment,
                prep,
                checkpoint_path=Path(tmp) / f"{name}.pt",
                progress=False,
            )
            runs[name] = result
            assert result.precision == name, result.precision
    for a, b in zip(runs["fp32"].history, runs["bf16"].history):
        print(
            f"epoch {a.epoch}: val acc fp32 {a.val_accuracy:.3f} bf16 {b.val_accuracy:.3f} | val loss fp32 "
            f"{a.val_loss:.4f} bf16 {b.val_loss:.4f} | img/s fp32 {a.images_per_s:.1f} bf16 {b.images_per_s:.1f}"
        )
    fp32, bf16 = runs["fp32"].history[-1], runs["bf16"].history[-1]
    speed = np.median([h.images_per_s for h in runs["bf16"].history]) / np.median(
        [h.images_per_s for h in runs["fp32"].history]
    )
    print(
        f"fp32_val_acc={fp32.val_accuracy:.3f} bf16_val_acc={bf16.val_accuracy:.3f} "
        f"diff={bf16.val_accuracy - fp32.val_accuracy:+.3f} speed_ratio={speed:.2f} "
        f"cpu_bf16={runtime.cpu_has_fast_bf16()}"
    )


if __name__ == "__main__":
    main()
