"""`braintumor predict`: labels and probabilities for scans on disk, with the served model's exact numbers."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from braintumor.errors import BrainTumorError
from braintumor.explain import grad_cam, overlay
from braintumor.fileio import atomic_path, write_text
from braintumor.imaging import problem_of
from braintumor.serving import Predictor, find_images

log = logging.getLogger(__name__)


def resolve_model(model: str) -> Path:
    """A model file path, or an MLflow model URI (models:/name@alias, runs:/...) downloaded to a local file."""
    if ":/" in model and not Path(model).exists():
        from braintumor.tracking import download_model_file

        return download_model_file(model)
    return Path(model)


def predict_paths(paths: list[str], model: str, *, output: str | None = None,
                  gradcam_dir: str | None = None) -> pd.DataFrame:
    if output and not output.endswith((".csv", ".json")):  # before any work, not after it
        raise BrainTumorError(f"--output {output}: use a .csv or .json file name")
    predictor = Predictor(resolve_model(model))
    files, missing = find_images(paths)
    for path in missing:
        print(f"skipped {path}: no such file or folder")
    squares, kept = [], []
    for path in files:
        try:
            squares.append(predictor.square(path))
            kept.append(path)
        except Exception as exc:  # one file's problem, whatever it is: the other files are still predicted
            print(f"skipped {path}: {problem_of(exc)}")
    if not kept:
        raise BrainTumorError(f"no readable image among {', '.join(map(str, paths))}; give image files "
                              "(.jpg, .png, ...) or folders that hold them.")
    table = predictor.table(predictor.probabilities(squares))
    table.insert(0, "file", [str(p) for p in kept])
    width = max(len(str(p)) for p in kept)
    for file, label, prob in zip(table["file"], table["label"], table["probability"]):
        print(f"{file:<{width}}  {label:<18} {prob:.3f}")
    if output:
        _write_table(table, output)
        print(f"wrote {output}")
    if gradcam_dir:
        _write_gradcams(predictor, kept, squares, table, Path(gradcam_dir))
        print(f"wrote Grad-CAM overlays to {gradcam_dir}/")
    return table


def _write_table(table: pd.DataFrame, output: str) -> None:
    if output.endswith(".json"):
        write_text(output, json.dumps(table.to_dict(orient="records"), indent=2) + "\n")
    elif output.endswith(".csv"):
        with atomic_path(output) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    else:
        raise BrainTumorError(f"--output {output}: use a .csv or .json file name")


def _write_gradcams(predictor: Predictor, files: list[Path], squares: list[np.ndarray], table: pd.DataFrame,
                    folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    size = predictor.prep.image_size
    for name, square, label in zip(_overlay_names(files), squares, table["label"]):
        tensor = predictor.transform(torch.from_numpy(square)[None])[None]  # (1, 3, H, W)
        cam, _ = grad_cam(predictor.model, predictor.model.layer4, tensor, predictor.classes.index(label))
        top = (square.shape[0] - size) // 2
        picture = overlay(square[top:top + size, top:top + size], cam)
        with atomic_path(folder / f"{name}.gradcam.png") as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")


def _overlay_names(files: list[Path]) -> list[str]:
    """One distinct name per scan: its stem, or where stems repeat (a folder of class folders: glioma/0001.jpg,
    meningioma/0001.jpg), its path under the scans' common folder with `__` for `/`, and its extension where that
    is still the same (x.jpg and x.png in one folder). A name that is still taken (a__b.jpg next to a/b.jpg, or
    names that differ only in case, which are one file on macOS and Windows) gets `_2`, `_3`, ... until it is free.
    """
    stems = Counter(p.stem.casefold() for p in files)
    if all(stems[p.stem.casefold()] == 1 for p in files):
        return [p.stem for p in files]
    resolved = [p.resolve() for p in files]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    bases = ["__".join(p.relative_to(root).with_suffix("").parts) for p in resolved]
    repeats = Counter(b.casefold() for b in bases)
    names, taken = [], set()
    for base, path in zip(bases, resolved):
        base = f"{base}_{path.suffix.lstrip('.')}" if repeats[base.casefold()] > 1 else base
        name, k = base, 1
        while name.casefold() in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name.casefold())
        names.append(name)
    return names
