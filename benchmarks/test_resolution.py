"""Does the network do better evaluated at a higher resolution than it was trained at (Touvron et al., "Fixing
the train-test resolution discrepancy", 2019)? One model file, several eval sizes, side by side, on val alone.

    python benchmarks/test_resolution.py --model runs/r11/model.pt --sizes 80 88 96

The train preset's random resized crop (area `augment.crop_scale`) shows the network each scan zoomed in, so at the
same size the eval view shows everything smaller than training did. For each size S the scans are prepared exactly
as the model file says, except that the resize size and the crop become S * (resize / image) and S; the network
(its weights and batch-norm statistics) is unchanged. Printed per size: val accuracy and macro-F1 (Testing is not
scored: an eval size is chosen on val). Last line: `val_f1 S=F ...`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from braintumor import evaluation as ev
from braintumor.config import load_params
from braintumor.data.cache import ImageDataset, cached_images
from braintumor.data.splits import in_splits, read_manifest
from braintumor.fileio import project_path
from braintumor.imaging import ImageLimits
from braintumor.inference import predict_logits, probabilities
from braintumor.model import load_model
from braintumor.transforms import Preprocessing, eval_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--params", default="params.yaml", help="where the manifest, data and cache are")
    parser.add_argument("--sizes", type=int, nargs="+", default=[80, 88, 96])
    args = parser.parse_args()

    project = load_params(args.params)
    net, bundle = load_model(args.model)
    net.eval()
    trained = Preprocessing.from_dict(bundle["preprocessing"])
    classes = list(bundle["classes"])
    hflip = bool((bundle.get("inference") or {}).get("tta_hflip", False))
    frame = read_manifest(project.paths.manifest, classes)
    limits, cache = ImageLimits.of(project.data), project_path(project.paths.cache)
    splits = {"val": in_splits(frame, "val").reset_index(drop=True)}
    print(f"{args.model}: trained at {trained.image_size} px (resize {trained.resize_size})")

    val_f1 = {}
    for size in args.sizes:
        prep = replace(trained, image_size=size,
                       scan=replace(trained.scan, size=round(size * trained.resize_size / trained.image_size)))
        line = [f"S={size}:"]
        for split, rows in splits.items():
            images = np.asarray(cached_images(rows, project.paths.data, prep.scan, cache, limits=limits))
            labels = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
            loader = torch.utils.data.DataLoader(ImageDataset(images, labels), batch_size=project.evaluate.batch_size)
            logits, y = predict_logits(net, loader, torch.device("cpu"), eval_preset(prep), tta_hflip=hflip)
            y = y.numpy()
            metrics = ev.classification_metrics(y, probabilities(logits), classes)
            line.append(f"{split} acc {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f}")
            val_f1[size] = metrics["macro_f1"]
        print(" ".join(line), flush=True)
    print("val_f1 " + " ".join(f"{s}={f:.4f}" for s, f in val_f1.items()))


if __name__ == "__main__":
    main()
