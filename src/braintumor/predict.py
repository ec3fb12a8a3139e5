"""`braintumor predict`: labels and probabilities for scans on disk, with the served model's exact numbers.

One row per picture: a 2-D image, each frame of a multi-frame DICOM, each axial slice of a NIfTI volume (`frame`
says which; 0 for a 2-D image). A volume also gets a summary row (no `frame`): the class probabilities averaged
over its slices that show a head, and the label with the highest mean.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from braintumor.errors import BrainTumorError, escaped
from braintumor.fileio import atomic_path, write_text
from braintumor.model.predictor import Predictor
from braintumor.runtime import prediction_device
from braintumor.scans.limits import problem_of
from braintumor.scans.pictures import Pictures
from braintumor.scans.preprocess import MIN_HEAD_FRACTION, head_pictures
from braintumor.scans.read import is_candidate

log = logging.getLogger(__name__)
# A slice "shows a head" when the head crop's region (the largest region brighter than preprocess.crop_threshold
# of the volume's 99th percentile) covers at least this fraction of it. It measures head tissue, not brain: in a
# volume that reaches the neck, neck slices count too (--middle keeps to the centre).
CSV_FLOAT_FORMAT = "%.6f"  # --output .csv, and the page's CSV download (app/)


@dataclass
class Scan:
    """One file's pictures to predict (all of them, or the middle ones), and for volumes which show a head."""

    path: Path
    pictures: Pictures
    images: list[np.ndarray]  # (S, S) uint8, one per picture
    shows_head: list[bool] | None = None  # per picture, for volumes
    several: bool = False  # the file holds more than one picture (or is a volume): rows name the frame or slice


def resolve_model(model: str) -> Path:
    """A model file path, or an MLflow model URI (models:/name@alias, runs:/...) downloaded to a local file."""
    if ":/" in model and not Path(model).exists():
        from braintumor.tracking.runs import download_model_file

        return download_model_file(model)
    return Path(model)


def predict_paths(
    paths: list[str],
    model: str,
    *,
    output: str | None = None,
    gradcam_dir: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    middle: int | None = None,
) -> pd.DataFrame:
    if output and not output.endswith((".csv", ".json")):  # before any work, not after it
        raise BrainTumorError(f"--output {output}: use a .csv or .json file name")
    check_output_paths(output, gradcam_dir)
    if middle is not None and middle < 1:
        raise BrainTumorError(f"--middle {middle}: give the number of middle slices to predict, 1 or more")
    target = prediction_device(device)  # a GPU that is not there: said before a model is fetched
    model_file = resolve_model(model)
    predictor = Predictor(model_file, device=target, precision=precision)
    files, missing = find_images(paths)
    for path in missing:
        print(f"skipped {escaped(path)}: no such file or folder")
    scans = []
    for path in files:
        try:
            scans.append(read_scan(predictor, path, middle))
        except Exception as exc:  # one file's problem, whatever it is: the other files are still predicted
            print(f"skipped {escaped(path)}: {problem_of(exc)}")
    if not scans:
        raise BrainTumorError(
            f"no readable image among {', '.join(map(str, paths))}; give image files "
            "(.jpg, .png, .dcm, .nii.gz, ...) or folders that hold them."
        )
    start = time.perf_counter()
    probs, novelty = predictor.predict([image for scan in scans for image in scan.images])  # (N, C), (N,) | None
    table = table_of(predictor, scans, probs, novelty)
    _log_answers(predictor, scans, table, time.perf_counter() - start, model, model_file)
    _print_table(table, scans, predictor.novelty.quantile if predictor.novelty else None)
    if output:
        with _said_in_one_line(output):
            _write_table(table, output)
        print(f"wrote {output}")
    if gradcam_dir:
        with _said_in_one_line(gradcam_dir):
            _write_gradcams(predictor, scans, table[table["frame"].notna()], Path(gradcam_dir))
        print(f"wrote Grad-CAM overlays to {gradcam_dir}/")
    return table


@contextlib.contextmanager
def _said_in_one_line(target: str):
    """/proc/x.csv, a full disk, a read-only folder: one line naming what the user gave (not a temporary file)."""
    try:
        yield
    except OSError as exc:
        raise BrainTumorError(
            f"cannot write {escaped(target)} ({exc.strerror or type(exc).__name__}); give --output / --gradcam a "
            "path in a writable folder"
        ) from None


def check_output_paths(output: str | None, gradcam_dir: str | None) -> None:
    """Before any work: --output's folder exists, and --gradcam names a folder (or nothing yet), not a file."""
    if output and not Path(output).resolve().parent.is_dir():
        raise BrainTumorError(
            f"--output {escaped(output)}: its folder {escaped(Path(output).resolve().parent)} does "
            "not exist; create it or write elsewhere"
        )
    if gradcam_dir and Path(gradcam_dir).exists() and not Path(gradcam_dir).is_dir():
        raise BrainTumorError(f"--gradcam {escaped(gradcam_dir)} is a file; give a folder for the overlays")


def read_scan(predictor: Predictor, path: Path, middle: int | None = None, *, data: bytes | None = None) -> Scan:
    """One file's pictures, prepared. `data`: the file's bytes when they are not on disk (a page's upload; `path`
    then only names it). A multi-frame DICOM decodes only the `middle` frames it keeps. Raises ImageProblem."""
    pictures = predictor.pictures(
        path if data is None else data, keep=None if middle is None else lambda count: middle_indices(count, middle)
    )
    keep = middle_indices(len(pictures.images), middle)
    shows_head = head_pictures(pictures, predictor.prep.scan.crop_threshold, keep) if pictures.is_volume else None
    several = len(keep) > 1 or (pictures.total or len(pictures.images)) > 1 or pictures.is_volume
    selected = Pictures(
        [pictures.images[i] for i in keep], [pictures.numbers[i] for i in keep], pictures.kind, pictures.description
    )
    return Scan(path, selected, predictor.images_of(selected), shows_head, several)


def _log_answers(
    predictor: Predictor, scans: list[Scan], table: pd.DataFrame, latency_s: float, model: str, model_file: Path
) -> None:
    """The pictures' rows (not a volume's summary) in the prediction log BRAINTUMOR_PREDICTION_LOG names, if any."""
    from braintumor.serving.prediction_log import PredictionLog, log_answers, model_identity

    target = PredictionLog.from_env()
    if target is None:
        return
    pictures = table[table["frame"].notna()].copy()
    pictures["row"] = [i for i, scan in enumerate(scans) for _ in scan.images]  # the scan each picture is from
    try:
        inputs = [scan.path.read_bytes() for scan in scans]
    except OSError as exc:  # a file gone since it was read: its answer stands, the log goes without it
        log.warning("prediction log: answers not recorded: %s", exc)
        return
    identity = model_identity(model_file, predictor.bundle, model if ":/" in model else None)
    log_answers(
        pictures,
        inputs,
        predictor.classes,
        identity,
        latency_s=latency_s,
        source="predict",
        novelty_quantile=predictor.novelty.quantile if predictor.novelty else None,
        prediction_log=target,
    )


def middle_indices(count: int, middle: int | None) -> list[int]:
    """All of range(count), or its `middle` central indices (the lower middle first when the parity differs)."""
    if middle is None or middle >= count or count <= 1:
        return list(range(count))
    start = (count - middle) // 2
    return list(range(start, start + middle))


def table_of(predictor: Predictor, scans: list[Scan], probs: np.ndarray, novelty: np.ndarray | None) -> pd.DataFrame:
    """One row per picture (file, frame, label, probability, per class, novelty), a volume's summary row after its
    slices (the means over the slices that show a head)."""
    parts, start = [], 0
    for scan in scans:
        count = len(scan.images)
        part = slice(start, start + count)
        rows = predictor.table(probs[part], None if novelty is None else novelty[part])
        rows.insert(0, "frame", pd.array(scan.pictures.numbers, dtype="Int64"))
        rows.insert(0, "file", str(scan.path))
        parts.append(rows)
        if scan.shows_head is not None and any(scan.shows_head):
            head = np.array(scan.shows_head)
            mean = probs[part][head].mean(axis=0, keepdims=True)  # (1, C)
            summary = predictor.table(mean, None if novelty is None else novelty[part][head].mean(keepdims=True))
            summary.insert(0, "frame", pd.array([None], dtype="Int64"))
            summary.insert(0, "file", str(scan.path))
            parts.append(summary)
        start += count
    return pd.concat(parts, ignore_index=True)


def _print_table(table: pd.DataFrame, scans: list[Scan], quantile: float | None) -> None:
    names = []  # in the order of table_of's rows
    for scan in scans:
        word = "slice" if scan.pictures.is_volume else "frame"
        names += [
            f"{escaped(scan.path)} [{word} {n}]" if scan.several else escaped(scan.path) for n in scan.pictures.numbers
        ]
        if scan.shows_head is not None and any(scan.shows_head):
            names.append(
                f"{escaped(scan.path)} [volume: mean of the {sum(scan.shows_head)} of {len(scan.shows_head)} "
                "slices that show a head]"
            )
        elif scan.shows_head is not None:
            print(
                f"{escaped(scan.path)}: no slice shows a head (head region >= {MIN_HEAD_FRACTION:.0%} of the slice); "
                "no volume summary"
            )
    width = max(len(name) for name in names)
    novelty = table["novelty"] if "novelty" in table else [None] * len(table)
    for name, label, prob, score in zip(names, table["label"], table["probability"], novelty):
        flag = f"  unlike the Training scans (novelty {score:.2f})" if score is not None and score > 1 else ""
        print(f"{name:<{width}}  {label:<18} {prob:.3f}{flag}")
    if "novelty" in table and table["unlike_training"].any():
        print(
            f"{int(table['unlike_training'].sum())} of {len(table)} rows unlike the Training scans (novelty > 1: "
            f"less like them than {quantile:.0%} of the val scans): check these scans before trusting their labels."
        )


def _write_table(table: pd.DataFrame, output: str) -> None:
    if output.endswith(".json"):
        records = table.astype({"frame": object}).where(table.notna(), None).to_dict(orient="records")
        write_text(output, json.dumps(records, indent=2) + "\n")  # a volume's summary row: "frame": null
    elif output.endswith(".csv"):
        with atomic_path(output) as tmp:
            table.to_csv(tmp, index=False, float_format=CSV_FLOAT_FORMAT)
    else:
        raise BrainTumorError(f"--output {output}: use a .csv or .json file name")


def _write_gradcams(predictor: Predictor, scans: list[Scan], table: pd.DataFrame, folder: Path) -> None:
    """One overlay per picture (not per volume summary): `<name>.gradcam.png`, `<name>.frame-<n>.gradcam.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [image for scan in scans for image in scan.images]
    names = [
        f"{name}.frame-{number}" if scan.several else name
        for name, scan in zip(_overlay_names([scan.path for scan in scans]), scans)
        for number in scan.pictures.numbers
    ]
    for name, image, label in zip(names, images, table["label"]):
        picture = predictor.explain(image, label)
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


def find_images(paths: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files given directly, and image files under folders (recursive). Returns (images, missing paths)."""
    found, missing = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_candidate(p)))
        elif path.is_file():
            found.append(path)
        else:
            missing.append(str(path))
    return found, missing
