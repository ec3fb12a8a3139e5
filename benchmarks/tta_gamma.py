"""Does averaging each prediction over gamma-shifted views of the scan help on scans from another source?
One model file, with and without the gamma views, side by side, on val alone.

    python benchmarks/tta_gamma.py --model runs/r11/model.pt [--gamma 1.5]

Views: the eval view at gamma 1/G, 1 and G (pixels in [0, 1] raised to that power before normalisation), each with
its mirror image when the model file says tta_hflip; their logits are averaged, as the mirror average does.
Printed, without and with the gamma views:
- macro-F1 on clean val, and on the six intensity-shifted copies of val that `train.calibration: shifted` fits the
  temperature on (calibration.shift_copies(0)): val as another scanner might render it, the val-only stand-in for
  another source.
Testing is not scored: a recipe is chosen on val.
Last line: `tta_gamma val_f1 A->B shifted_f1 C->D`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from braintumor import evaluation as ev
from braintumor.calibration import shift_copies
from braintumor.config import load_params, params_from_dict
from braintumor.data.cache import ImageDataset, IndexedTransform, cached_images
from braintumor.data.splits import in_splits, read_manifest
from braintumor.fileio import project_path
from braintumor.imaging import ImageLimits
from braintumor.inference import predict_logits, probabilities
from braintumor.model import load_model
from braintumor.transforms import Preprocessing, eval_preset, shifted_preset


class GammaViews(nn.Module):
    """The network's logits averaged over a normalised batch at gamma 1/G, 1 and G."""

    def __init__(self, net: nn.Module, prep: Preprocessing, gamma: float) -> None:
        super().__init__()
        self.net, self.gammas = net, (1 / gamma, 1.0, gamma)
        self.register_buffer("mean", torch.tensor(prep.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(prep.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = (x * self.std + self.mean).clamp(0.0, 1.0)  # back to [0, 1]
        views = [self.net(x if g == 1.0 else (pixels ** g - self.mean) / self.std) for g in self.gammas]
        return torch.stack(views).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--params", default="params.yaml", help="where the manifest, data and cache are")
    parser.add_argument("--gamma", type=float, default=1.5)
    args = parser.parse_args()

    project = load_params(args.params)
    net, bundle = load_model(args.model)
    net.eval()
    trained = params_from_dict(bundle["params"], source=f"{args.model} (its params)")
    prep = Preprocessing.from_dict(bundle["preprocessing"])
    classes = list(bundle["classes"])
    hflip = bool((bundle.get("inference") or {}).get("tta_hflip", False))
    frame = read_manifest(project.paths.manifest, classes)
    limits, cache = ImageLimits.of(project.data), project_path(project.paths.cache)

    def decoded(rows):
        images = np.asarray(cached_images(rows, project.paths.data, prep.scan, cache, limits=limits))
        return images, rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()

    val = in_splits(frame, "val").sort_values("path", kind="stable").reset_index(drop=True)
    val_images, val_labels = decoded(val)
    dataset = ImageDataset(val_images, val_labels)
    batch = project.evaluate.batch_size
    cpu = torch.device("cpu")

    def logits(model, data, transform):
        loader = torch.utils.data.DataLoader(data, batch_size=batch)
        return predict_logits(model.eval(), loader, cpu, transform, tta_hflip=hflip)

    def f1(out) -> float:
        logit, y = out
        return ev.classification_metrics(y.numpy(), probabilities(logit), classes)["macro_f1"]

    models = {"plain": net, "gamma": GammaViews(net, prep, args.gamma)}
    copies = [IndexedTransform(dataset, shifted_preset(prep, trained.augment, strength, seed, len(dataset)))
              for seed, strength in shift_copies(0)]
    figures = {}
    for name, model in models.items():
        clean = f1(logits(model, dataset, eval_preset(prep)))
        shifted = [f1(logits(model, copy, nn.Identity())) for copy in copies]
        figures[name] = (clean, float(np.mean(shifted)))
        print(f"{name}: val macro-F1 {clean:.4f}; shifted copies macro-F1 mean {np.mean(shifted):.4f} "
              f"({' '.join(f'{s:.3f}' for s in shifted)})", flush=True)

    (a, b), (c, d) = figures["plain"], figures["gamma"]
    print(f"tta_gamma val_f1 {a:.4f}->{c:.4f} shifted_f1 {b:.4f}->{d:.4f}")


if __name__ == "__main__":
    main()
