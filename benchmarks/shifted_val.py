"""Model files side by side on val and on val as another scanner might render it: the val-only stand-in for scans
from another source, on which recipes are chosen (Testing is not scored).

    python benchmarks/shifted_val.py --model runs/r17/model.pt --model runs/r17/model_best.pt

For each model file, with its own preprocessing and test-time mirror setting:
- macro-F1 (and accuracy) on clean val,
- macro-F1 on each of the six intensity-shifted copies of val that `train.calibration: shifted` fits the temperature
  on (calibration.shift_copies(0): the train preset's intensity augmentation at 1x, 2x and 3x its strength, two
  copies each), and their mean.
Last line per model: `shifted_val MODEL val_f1 A shifted_f1 B`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from braintumor.config import Params, load_params, params_from_dict
from braintumor.data.cache import ImageDataset, IndexedTransform, cached_images
from braintumor.data.splits import in_splits, read_manifest
from braintumor.evaluation import metrics as ev
from braintumor.evaluation.results import SetScores
from braintumor.fileio import project_path
from braintumor.model.calibration import shift_copies
from braintumor.model.inference import predict_logits, probabilities
from braintumor.model.network import load_model
from braintumor.model.transforms import Preprocessing, eval_preset, shifted_preset
from braintumor.scans.limits import ImageLimits


@dataclass
class ValSets:
    """A model file's network and its val scans: clean (with the eval transform) and the six shifted copies."""

    net: nn.Module
    prep: Preprocessing
    classes: list[str]
    hflip: bool
    clean: ImageDataset
    copies: list[IndexedTransform]
    batch_size: int

    def logits(self, model: nn.Module, data, transform) -> tuple[torch.Tensor, torch.Tensor]:
        loader = torch.utils.data.DataLoader(data, batch_size=self.batch_size)
        return predict_logits(model.eval(), loader, torch.device("cpu"), transform, tta_hflip=self.hflip)

    def metrics(self, out) -> SetScores:
        logit, y = out
        return ev.classification_metrics(y.numpy(), probabilities(logit), self.classes)

    def scores(self, model: nn.Module | None = None) -> tuple[SetScores, list[float]]:
        """(clean val metrics, macro-F1 on each shifted copy) of `model` (default: the file's network)."""
        model = self.net if model is None else model
        clean = self.metrics(self.logits(model, self.clean, eval_preset(self.prep)))
        shifted = [self.metrics(self.logits(model, copy, nn.Identity())).macro_f1 for copy in self.copies]
        return clean, shifted


def val_sets(model_path: str, project: Params, size: int | None = None) -> ValSets:
    """The val split of `project`'s manifest, decoded as the model file's preprocessing says (through the cache);
    with `size`, at that network input size instead (resize scaled alike: benchmarks/test_resolution.py)."""
    net, bundle = load_model(model_path)
    trained = params_from_dict(bundle["params"], source=f"{model_path} (its params)")
    prep = Preprocessing.from_dict(bundle["preprocessing"])
    if size is not None:
        resize = round(size * prep.resize_size / prep.image_size)
        prep = replace(prep, image_size=size, scan=replace(prep.scan, size=resize))
    classes = list(bundle["classes"])
    frame = read_manifest(project.paths.manifest, classes)
    val = in_splits(frame, "val").sort_values("path", kind="stable").reset_index(drop=True)
    images = np.asarray(
        cached_images(
            val, project.paths.data, prep.scan, project_path(project.paths.cache), limits=ImageLimits.of(project.data)
        )
    )
    clean = ImageDataset(images, val["label"].map({c: i for i, c in enumerate(classes)}).to_numpy())
    copies = [
        IndexedTransform(clean, shifted_preset(prep, trained.augment, strength, seed, len(clean)))
        for seed, strength in shift_copies(0)
    ]
    hflip = bool((bundle.get("inference") or {}).get("tta_hflip", False))
    return ValSets(net.eval(), prep, classes, hflip, clean, copies, project.evaluate.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a model file (repeat to compare)")
    parser.add_argument("--params", default="params.yaml", help="where the manifest, data and cache are")
    args = parser.parse_args()
    project = load_params(args.params)
    for path in args.model:
        clean, shifted = val_sets(path, project).scores()
        print(
            f"{path}: val accuracy {clean.accuracy:.4f} macro-F1 {clean.macro_f1:.4f}; shifted copies "
            f"macro-F1 {' '.join(f'{s:.3f}' for s in shifted)}",
            flush=True,
        )
        print(f"shifted_val {path} val_f1 {clean.macro_f1:.4f} shifted_f1 {np.mean(shifted):.4f}", flush=True)


if __name__ == "__main__":
    main()
