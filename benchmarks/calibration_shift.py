"""Which temperature keeps a trained model's probabilities honest on scans from another source? One model file,
each `train.calibration` method, side by side.

    python benchmarks/calibration_shift.py [--model models/model.pt] [--params params.yaml]

The model file gives the network, its preprocessing, its TTA and the augment params it was trained with (the
shifted copies use those); --params gives the manifest, the data folder and the cache (the project's). For each
method (none: T = 1; val: fitted on val; shifted: on val and its intensity-shifted copies, the train stage's own
`pipeline.calibrate`) it prints T and the expected calibration error (ECE, 15 bins) and log loss on clean val, on
Testing and on its leak-free part. Accuracy does not change with T. Choose a method by what it is meant for: val
always prefers `val`; Testing of the public set comes from another source than Training, as deployment scans do.
Last line: `ece_testing none=... val=... shifted=...`.

    python benchmarks/calibration_shift.py --model M --seeds 8

also refits the shifted temperature with 8 different seeds for the copies (`pipeline.calibrate(seed=...)`), once
with the train stage's Latin-hypercube draws and once with independent draws per scan (what the copies would be
without the stratification), and prints the spread of T and of Testing ECE over the seeds for each: how much of a
reported figure is the copies' luck. Line: `t_spread lhs=MIN..MAX iid=MIN..MAX`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from braintumor.config import load_params, params_from_dict
from braintumor.data.cache import cached_images
from braintumor.data.splits import in_splits, read_manifest
from braintumor.evaluation import metrics as ev
from braintumor.evaluation.scoring import score_rows
from braintumor.fileio import project_path
from braintumor.model import transforms
from braintumor.model.inference import probabilities
from braintumor.model.network import load_model
from braintumor.model.predictor import Predictor
from braintumor.model.transforms import Preprocessing
from braintumor.pipeline import calibrate
from braintumor.scans.limits import ImageLimits
from braintumor.training.loop import TrainData

METHODS = ("none", "val", "shifted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.pt")
    parser.add_argument("--params", default="params.yaml", help="where the manifest, data and cache are")
    parser.add_argument("--seeds", type=int, default=0, help="refit the shifted T with this many copy seeds")
    args = parser.parse_args()

    project = load_params(args.params)
    model, bundle = load_model(args.model)
    trained = params_from_dict(bundle["params"], source=f"{args.model} (its params)")
    prep = Preprocessing.from_dict(bundle["preprocessing"])
    classes = list(bundle["classes"])
    frame = read_manifest(project.paths.manifest, classes)
    val = in_splits(frame, "val").sort_values("path", kind="stable").reset_index(drop=True)  # the train stage's order
    test = in_splits(frame, "test")
    images = np.asarray(
        cached_images(
            val, project.paths.data, prep.scan, project_path(project.paths.cache), limits=ImageLimits.of(project.data)
        )
    )
    labels = val["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    data = TrainData(images[:0], labels[:0], images, labels, classes)
    predictor = Predictor(args.model, batch_size=project.evaluate.batch_size)
    val_scored = score_rows(predictor, val, project.paths.data, project)
    test_scored = score_rows(predictor, test, project.paths.data, project)
    val_logits, val_true = val_scored.logits, val_scored.labels
    test_logits, test_true = test_scored.logits, test_scored.labels
    leak_free = ev.leak_free_mask(test)
    print(
        f"{args.model}: {len(val)} val scans, {len(test)} Testing ({int(leak_free.sum())} leak-free); "
        f"stored T = {predictor.inference.temperature:.3f} ({predictor.inference.calibration})"
    )

    def scores(logits: torch.Tensor, y_true: np.ndarray, temperature: float) -> dict[str, float]:
        return {
            "ece": round(ev.expected_calibration_error(y_true, probabilities(logits, temperature)), 4),
            "log_loss": round(float(F.cross_entropy(logits / temperature, torch.as_tensor(y_true))), 4),
        }

    results = {}
    for method in METHODS:
        params = replace(trained, train=replace(trained.train, calibration=method))
        temperature = calibrate(model, data, prep, params).temperature
        results[method] = {
            "temperature": round(temperature, 4),
            "val": scores(val_logits, val_true, temperature),
            "testing": scores(test_logits, test_true, temperature),
            "leak_free": scores(test_logits[leak_free], test_true[leak_free], temperature),
        }
        print(method, json.dumps(results[method]))
    accuracy = float((test_logits.argmax(1).numpy() == test_true).mean())
    print(f"accuracy val {(val_logits.argmax(1).numpy() == val_true).mean():.3f} testing {accuracy:.3f}")
    print("ece_testing " + " ".join(f"{m}={results[m]['testing']['ece']:.3f}" for m in METHODS))
    if args.seeds:
        shifted = replace(trained, train=replace(trained.train, calibration="shifted"))
        spreads, stratified = {}, transforms.latin_hypercube
        for draws, table in (("lhs", stratified), ("iid", _independent)):
            transforms.latin_hypercube = table  # what ShiftedPreset draws its table with
            try:
                temperatures = [calibrate(model, data, prep, shifted, seed=s).temperature for s in range(args.seeds)]
            finally:
                transforms.latin_hypercube = stratified
            eces = [ev.expected_calibration_error(test_true, probabilities(test_logits, t)) for t in temperatures]
            spreads[draws] = f"{min(temperatures):.3f}..{max(temperatures):.3f}"
            print(
                f"{draws}: T median {np.median(temperatures):.3f} range {spreads[draws]} "
                f"(sd {np.std(temperatures):.3f}); "
                f"Testing ECE median {np.median(eces):.3f} range {min(eces):.3f}..{max(eces):.3f}"
            )
        print("t_spread " + " ".join(f"{k}={v}" for k, v in spreads.items()))


def _independent(n: int, dims: int, generator: torch.Generator) -> torch.Tensor:
    """Independent uniform draws per scan: the shifted copies without the Latin hypercube's stratification."""
    return torch.rand(n, dims, generator=generator)


if __name__ == "__main__":
    main()
