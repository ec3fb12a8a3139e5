"""Which per-scan score best says "this scan is unlike the Training scans, do not trust the answer": four scores
side by side, chosen on val only.

    python benchmarks/unlike_training.py --model runs/r19/model.pt [--model ...] [--testing]

Scores (higher = less like Training), on each model file's own eval view (mirror-averaged when it uses TTA):
- msp: 1 - the highest calibrated probability (softmax(logits / T));
- energy: -logsumexp(logits) (Liu et al., NeurIPS 2020);
- mahalanobis: the smallest Mahalanobis distance of the penultimate (2048-d) features to a class mean, one shared
  covariance of the train scans' features, Ledoit-Wolf shrinkage (Lee et al., NeurIPS 2018);
- knn: distance of the L2-normalised features to their 10th nearest train scan's (Sun et al., ICML 2022).
Train statistics come from the train split through the eval preset.

Per model and score, val-side only:
- error AUROC: how well the score ranks wrong predictions above right ones, over clean val and its six
  intensity-shifted copies (benchmarks/shifted_val.py);
- shift AUROC: how well it tells clean val from the two 3x-strength copies.
`--testing` adds, after the choice, the Testing figures: error AUROC, and with the threshold at the score's 95th
percentile on clean val, the share of Testing (and leak-free Testing) scans flagged and the accuracy of flagged
and unflagged scans.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from shifted_val import ValSets, val_sets
from sklearn.metrics import roc_auc_score

from braintumor.config import Params, load_params
from braintumor.data.cache import ImageDataset, cached_images
from braintumor.data.splits import in_splits, read_manifest
from braintumor.evaluation.metrics import leak_free_mask
from braintumor.fileio import project_path
from braintumor.model.calibration import shift_copies
from braintumor.model.inference import forward_outputs
from braintumor.model.novelty import fit_novelty
from braintumor.model.transforms import eval_preset
from braintumor.scans.limits import ImageLimits

SCORES = ("msp", "energy", "mahalanobis", "knn")
K = 10
FLAG_QUANTILE = 0.95


def features(sets: ValSets, data, transform) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(penultimate features (N, 2048), logits (N, C), labels (N,)), mirror-averaged when the file uses TTA."""
    loader = torch.utils.data.DataLoader(data, batch_size=sets.batch_size)
    out = forward_outputs(sets.net, loader, torch.device("cpu"), transform, tta_hflip=sets.hflip, features=True)
    return out.features, out.logits, out.labels.numpy()


class Scorer:
    def __init__(self, train_feats: torch.Tensor, train_labels: np.ndarray, temperature: float) -> None:
        self.temperature = temperature
        # the shipped score's own fit (its threshold is not used here: every score is thresholded alike below)
        self.mahalanobis = fit_novelty(train_feats, train_labels, train_feats[:0], FLAG_QUANTILE)
        self.bank = torch.nn.functional.normalize(train_feats, dim=1)

    def __call__(self, name: str, feats: torch.Tensor, logits: torch.Tensor) -> np.ndarray:
        if name == "msp":
            return 1 - torch.softmax(logits / self.temperature, dim=1).max(dim=1).values.numpy()
        if name == "energy":
            return -torch.logsumexp(logits, dim=1).numpy()
        if name == "mahalanobis":
            return self.mahalanobis.raw(feats)
        if name == "knn":
            dist = torch.cdist(torch.nn.functional.normalize(feats, dim=1), self.bank)
            return dist.topk(K, dim=1, largest=False).values[:, -1].numpy()
        raise ValueError(name)


def auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(positive, scores)) if 0 < positive.sum() < len(positive) else float("nan")


def split_images(project: Params, sets: ValSets, split: str):
    frame = in_splits(read_manifest(project.paths.manifest, sets.classes), split)
    frame = frame.sort_values("path", kind="stable").reset_index(drop=True)
    images = np.asarray(
        cached_images(
            frame,
            project.paths.data,
            sets.prep.scan,
            project_path(project.paths.cache),
            limits=ImageLimits.of(project.data),
        )
    )
    labels = frame["label"].map({c: i for i, c in enumerate(sets.classes)}).to_numpy()
    return frame, ImageDataset(images, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a model file (repeat to compare)")
    parser.add_argument("--params", default="params.yaml", help="where the manifest, data and cache are")
    parser.add_argument("--testing", action="store_true", help="also score Testing (only after choosing on val)")
    args = parser.parse_args()
    project = load_params(args.params)
    torch.set_grad_enabled(False)
    for path in args.model:
        sets = val_sets(path, project)
        temperature = float(torch.load(path, map_location="cpu", weights_only=True)["inference"]["temperature"])
        _, train = split_images(project, sets, "train")
        scorer = Scorer(*features(sets, train, eval_preset(sets.prep))[::2], temperature)
        clean = features(sets, sets.clean, eval_preset(sets.prep))
        copies = [features(sets, copy, torch.nn.Identity()) for copy in sets.copies]
        strengths = [strength for _, strength in shift_copies(0)]
        strongest = [i for i, strength in enumerate(strengths) if strength == max(strengths)]
        if args.testing:
            frame, test = split_images(project, sets, "test")
            tf, tl, ty = features(sets, test, eval_preset(sets.prep))
            free = leak_free_mask(frame)
        for name in SCORES:
            parts = [clean, *copies]
            score = np.concatenate([scorer(name, f, lg) for f, lg, _ in parts])
            wrong = np.concatenate([lg.argmax(1).numpy() != y for _, lg, y in parts])
            clean_score = scorer(name, clean[0], clean[1])
            out = np.concatenate([scorer(name, copies[i][0], copies[i][1]) for i in strongest])
            shift = auroc(np.r_[np.zeros(len(clean_score)), np.ones(len(out))], np.r_[clean_score, out])
            line = f"unlike_training {path} {name} error_auroc {auroc(wrong, score):.4f} shift_auroc {shift:.4f}"
            if args.testing:
                t_score, t_wrong = scorer(name, tf, tl), tl.argmax(1).numpy() != ty
                flagged = t_score > np.quantile(clean_score, FLAG_QUANTILE)
                line += (
                    f" | testing error_auroc {auroc(t_wrong, t_score):.4f} flagged {flagged.mean():.3f}"
                    f" leak_free_flagged {flagged[free].mean():.3f}"
                    f" acc_flagged {1 - t_wrong[flagged].mean():.3f} acc_unflagged {1 - t_wrong[~flagged].mean():.3f}"
                )
            print(line, flush=True)


if __name__ == "__main__":
    main()
