"""Recall per class on val and Testing, split by whether a scan has one given image size: on the public set,
512 x 512 is the export of one source (figshare's contrast-enhanced T1 slices) and other sizes are other sources.

    python benchmarks/recall_by_size.py --size 512x512 --model runs/r23/model.pt [--model ...]

Each model file answers as the served model does (its preprocessing, mirror average and temperature), on the rows
of the project's manifest (--params). Used for the source ablation of the README (run 27): leave a class's
Training scans of one source out, then see how that class fares on val scans of that source. One line per model,
split, class and side: recall, count and what the missed scans were called.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from braintumor.config import load_params
from braintumor.data.splits import read_manifest
from braintumor.model.predictor import Predictor


def predictions(predictor: Predictor, rows: pd.DataFrame, root: str, batch: int = 64) -> list[str]:
    probs = [
        predictor.predict([predictor.load_image(f"{root}/{path}") for path in rows["path"][i : i + batch]])[0]
        for i in range(0, len(rows), batch)
    ]
    return [predictor.classes[i] for i in np.concatenate(probs).argmax(axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="a model file (repeat to compare)")
    parser.add_argument("--size", default="512x512", help="WIDTHxHEIGHT of the one side (default 512x512)")
    parser.add_argument("--params", default="params.yaml", help="where the manifest and the data are")
    args = parser.parse_args()
    try:
        width, height = (int(v) for v in args.size.split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 512x512")
    params = load_params(args.params)
    manifest = read_manifest(params.paths.manifest, params.data.classes)
    at_size = (manifest["width"] == width) & (manifest["height"] == height)
    for model in args.model:
        predictor = Predictor(model)
        for split in ("val", "test"):
            rows = manifest[manifest["split"] == split].assign(at_size=at_size)
            rows = rows.assign(predicted=predictions(predictor, rows, params.paths.data))
            for label in params.data.classes:
                for side in (True, False):
                    group = rows[(rows["label"] == label) & (rows["at_size"] == side)]
                    if group.empty:
                        continue
                    missed = group.loc[group["predicted"] != label, "predicted"].value_counts().to_dict()
                    print(
                        f"{model} {split} {label} {args.size if side else 'other sizes'}: recall "
                        f"{(group['predicted'] == label).mean():.3f} of {len(group)}; missed as {missed}"
                    )


if __name__ == "__main__":
    main()
