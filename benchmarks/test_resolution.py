"""Does the network do better evaluated at a higher resolution than it was trained at (Touvron et al., "Fixing
the train-test resolution discrepancy", 2019)? One model file, several eval sizes, side by side, on val alone.

    python benchmarks/test_resolution.py --model runs/r11/model.pt --sizes 80 88 96

The train preset's random resized crop (area `augment.crop_scale`) shows the network each scan zoomed in, so at the
same size the eval view shows everything smaller than training did. For each size S the scans are prepared exactly
as the model file says, except that the resize size and the crop become S * (resize / image) and S. Without
--refit-bn the network (its weights and batch-norm statistics) is unchanged; with it, as FixRes does, the batch-norm
statistics are re-estimated at S from the train scans through the eval preset (torch's `update_bn`, one pass).
Printed per size: val accuracy and macro-F1, and macro-F1 on the six intensity-shifted val copies
(benchmarks/shifted_val.py) and their mean (Testing is not scored: an eval size is chosen on val).
Last line: `val_f1 S=F ... shifted_f1 S=F ...`.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from shifted_val import ValSets, val_sets
from torch.optim.swa_utils import update_bn

from braintumor.config import load_params
from braintumor.data.cache import ImageDataset, cached_images
from braintumor.data.splits import in_splits, read_manifest
from braintumor.fileio import project_path
from braintumor.model.transforms import eval_preset
from braintumor.scans.limits import ImageLimits


def refit_batch_norm(sets: ValSets, project) -> None:
    """FixRes: re-estimate `sets.net`'s batch-norm statistics on the train scans through the eval preset at
    `sets`' size (one pass, an equal-weight average: torch's update_bn)."""
    frame = read_manifest(project.paths.manifest, sets.classes)
    rows = in_splits(frame, "train").sort_values("path", kind="stable").reset_index(drop=True)
    images = cached_images(
        rows, project.paths.data, sets.prep.scan, project_path(project.paths.cache), limits=ImageLimits.of(project.data)
    )
    loader = torch.utils.data.DataLoader(
        ImageDataset(np.asarray(images), np.zeros(len(rows))), batch_size=sets.batch_size
    )
    transform = eval_preset(sets.prep)
    with torch.no_grad():
        update_bn((transform(batch) for batch, _ in loader), sets.net)
    sets.net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--params", default="params.yaml", help="where the manifest, data and cache are")
    parser.add_argument("--sizes", type=int, nargs="+", default=[80, 88, 96])
    parser.add_argument(
        "--refit-bn",
        action="store_true",
        help="re-estimate batch-norm statistics at each size on the train scans (FixRes)",
    )
    args = parser.parse_args()

    project = load_params(args.params)
    trained = val_sets(args.model, project).prep
    print(
        f"{args.model}: trained at {trained.image_size} px (resize {trained.resize_size}); "
        f"batch norm {'refitted at each other size' if args.refit_bn else 'as trained'}"
    )
    val_f1, shifted_f1 = {}, {}
    for size in args.sizes:
        sets = val_sets(args.model, project, size)
        if args.refit_bn and size != trained.image_size:
            refit_batch_norm(sets, project)
        clean, shifted = sets.scores()
        val_f1[size], shifted_f1[size] = clean.macro_f1, float(np.mean(shifted))
        print(
            f"S={size}: val acc {clean.accuracy:.4f} macro-F1 {clean.macro_f1:.4f}; shifted copies "
            f"macro-F1 {' '.join(f'{f:.3f}' for f in shifted)} (mean {shifted_f1[size]:.4f})",
            flush=True,
        )
    print(
        "val_f1 "
        + " ".join(f"{s}={f:.4f}" for s, f in val_f1.items())
        + " shifted_f1 "
        + " ".join(f"{s}={f:.4f}" for s, f in shifted_f1.items())
    )


if __name__ == "__main__":
    main()
