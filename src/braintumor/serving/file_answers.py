"""One answer per file: the served model's second way to answer, for Spark (`mlflow.pyfunc.spark_udf`).

The served model answers one row per picture (serving.requests.answer_request): a multi-frame DICOM or a NIfTI
volume gives several. A Spark UDF must answer one row per input row, so with the param `rows="file"` the model
answers one row per file instead (deploy/spark_score.py), in three columns that Spark reads as structs:

- `scan`: what the file holds: `kind` (image, dicom, nifti), `pictures` (how many), `description`, and `error`,
  the reason a file cannot be used (its other values are then null): one bad file never fails the batch;
- `answer`: the file's answer: a single picture's label, probability, one probability per class, `novelty` and
  `unlike_training`; for a file of several pictures (a multi-frame DICOM, a NIfTI volume) the volume summary of
  `braintumor predict`: the class probabilities and the novelty averaged over the pictures that show a head
  (preprocess.head_pictures), and the label with the highest mean. `averaged_over` counts the pictures it stands for
  (1 for a single picture; 0 when no picture shows a head, and the rest of the answer is null);
- `frames`: one answer per picture (`frame`, the same columns, `shows_head` for files of several pictures), the
  rows `braintumor predict` and the REST answer give.

The values are nested because MLflow casts each top-level field of a struct result to its type: a missing label
would become the string "nan" and a missing `unlike_training` False, while None inside a nested value stays null.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from braintumor.errors import BrainTumorError
from braintumor.model.predictor import Predictor
from braintumor.scans.limits import ImageProblem, problem_of
from braintumor.scans.pictures import Pictures
from braintumor.scans.preprocess import head_pictures
from braintumor.serving.requests import ROWS, ROWS_PARAM, RequestError, decode_base64, request_limits, request_values

log = logging.getLogger(__name__)


@dataclass
class _Scan:
    pictures: Pictures
    start: int  # where its pictures begin in the batch
    shows_head: list[bool] | None  # per picture, for files of several pictures

    @property
    def part(self) -> slice:
        return slice(self.start, self.start + len(self.pictures.images))


def rows_of(params: dict | None) -> str:
    """The model's `rows` param (MLflow has already checked that it is a string); the REST default: "picture"."""
    rows = (params or {}).get(ROWS_PARAM) or ROWS[0]
    if rows not in ROWS:
        raise RequestError(f"params {ROWS_PARAM}={rows!r}: use {' or '.join(map(repr, ROWS))}")
    return rows


def answer_files(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """Column `image` of base64 strings -> one row per file: `scan`, `answer`, `frames` (see the module's text).

    Every usable file's pictures go through the network together, in the predictor's batches. data.max_frames
    bounds the pictures of the whole request, as in the REST answer, so that one request's work stays within the
    server's timeout: a file past it gets that reason (send fewer files per batch: spark_score.py --batch-size)."""
    scans: list[_Scan | str] = []  # a _Scan, or why the file cannot be used
    images: list[np.ndarray] = []  # (S, S) uint8, every picture of every usable file
    for row, value in enumerate(request_values(frame, max_rows=predictor.limits.max_frames)):
        try:
            limits = request_limits(predictor.limits, len(images))  # frames x rows, as the REST answer's
            pictures = predictor.pictures(decode_base64(value, max_bytes=limits.max_file_bytes), limits=limits)
            prepared = predictor.images_of(pictures)
            several = len(pictures.images) > 1 or pictures.is_volume
            shows_head = head_pictures(pictures, predictor.prep.scan.crop_threshold) if several else None
        except Exception as exc:  # one file's problem, whatever it is: the other files are still answered
            if not isinstance(exc, (BrainTumorError, ImageProblem)):
                log.warning("row %d could not be prepared", row, exc_info=True)
            scans.append(problem_of(exc))
            continue
        scans.append(_Scan(pictures, len(images), shows_head))
        images.extend(prepared)
    probs, novelty = predictor.predict(images)  # (N, C), (N,) or None
    answers = [
        _answer(predictor, scan, probs, novelty) if isinstance(scan, _Scan) else _unusable(predictor, scan)
        for scan in scans
    ]
    return pd.DataFrame(answers, columns=["scan", "answer", "frames"])


def _answer(predictor: Predictor, scan: _Scan, probs: np.ndarray, novelty: np.ndarray | None) -> dict:
    mine, score = probs[scan.part], None if novelty is None else novelty[scan.part]
    table = predictor.table(mine, score)
    if scan.shows_head is None:
        answer = {**_record(table.iloc[0]), "averaged_over": 1}
    elif any(scan.shows_head):  # as predict's volume summary: the means over the pictures that show a head
        head = np.array(scan.shows_head)
        summary = predictor.table(
            mine[head].mean(axis=0, keepdims=True), None if score is None else score[head].mean(keepdims=True)
        )
        answer = {**_record(summary.iloc[0]), "averaged_over": int(head.sum())}
    else:
        answer = {**_empty_answer(predictor), "averaged_over": 0}
    frames = table.assign(shows_head=scan.shows_head)
    frames.insert(0, "frame", scan.pictures.numbers)
    info = {
        "kind": scan.pictures.kind,
        "pictures": len(scan.pictures.images),
        "description": scan.pictures.description,
        "error": None,
    }
    return {"scan": info, "answer": answer, "frames": [_record(row) for _, row in frames.iterrows()]}


def _unusable(predictor: Predictor, reason: str) -> dict:
    info = {"kind": None, "pictures": None, "description": None, "error": reason}
    return {"scan": info, "answer": {**_empty_answer(predictor), "averaged_over": None}, "frames": []}


def _empty_answer(predictor: Predictor) -> dict:
    return dict.fromkeys(picture_fields(predictor.classes, predictor.novelty is not None))


def _record(row: pd.Series) -> dict:
    """A table row as plain Python values (numpy scalars would not pass through JSON), None for a missing one."""
    return {
        key: None if value is None else value.item() if isinstance(value, np.generic) else value
        for key, value in row.items()
    }


def picture_fields(classes: list[str], novelty: bool) -> dict[str, str]:
    """The answer for one picture, field -> Spark SQL type, in the order of Predictor.table's columns."""
    fields = {"label": "string", "probability": "double", **dict.fromkeys(classes, "double")}
    return {**fields, "novelty": "double", "unlike_training": "boolean"} if novelty else fields


def spark_result_type(classes: list[str], novelty: bool) -> str:
    """The Spark SQL type (DDL) of `answer_files`'s rows, the `result_type` of spark_udf."""
    picture = [f"{_quoted(name)}: {kind}" for name, kind in picture_fields(classes, novelty).items()]
    return (
        f"scan: struct<kind: string, pictures: long, description: string, error: string>, "
        f"answer: struct<{', '.join(picture)}, averaged_over: long>, "
        f"frames: array<struct<frame: long, {', '.join(picture)}, shows_head: boolean>>"
    )


def classes_of_signature(columns: list[str]) -> tuple[list[str], bool]:
    """The class names and whether there is a novelty score, from the served model's output columns (its logged
    signature: row, frame, label, probability, one column per class, then novelty and unlike_training)."""
    if "probability" not in columns:
        raise BrainTumorError(
            f"the model's output columns {columns} are not this project's (row, frame, label, "
            "probability, one per class, ...): was it logged by braintumor?"
        )
    end = columns.index("novelty") if "novelty" in columns else len(columns)
    return columns[columns.index("probability") + 1 : end], "novelty" in columns


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
