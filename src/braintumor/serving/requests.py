"""A served request: the `image` column of base64-encoded file bytes, checked and decoded row by row, answered by
the Predictor with one row per picture (`answer_request`), and the error that names each row that cannot be used
(HTTP 400 when served).

The bounds of one request: each value's decoded size (data.max_file_bytes, checked before decoding) and the
pictures of all its rows together (data.max_frames), so that one request's work stays within the server's timeout.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from braintumor.errors import BrainTumorError
from braintumor.model.predictor import Predictor
from braintumor.scans.limits import ImageLimits, ImageProblem, check_file_size, problem_of

INPUT_COLUMN = "image"
ROWS_PARAM = "rows"  # the model's param: "picture" (the REST answer, the default) or "file" (file_answers.py)
ROWS = ("picture", "file")
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the served model's code file (models from code)
log = logging.getLogger(__name__)


class RequestError(BrainTumorError):
    """A prediction request that cannot be answered as sent (HTTP 400 when served).

    `rows` holds (row index, reason) for each row that cannot be used (empty when the request as a whole is wrong).
    """

    def __init__(self, message: str, rows: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.rows = list(rows or [])


def answer_request(predictor: Predictor, frame: pd.DataFrame) -> pd.DataFrame:
    """The served model's answer: column `image` of base64 strings -> one row per picture (`row`, `frame`, label,
    probability, per-class probabilities; novelty when the model file has the score). Every row is decoded before
    the network runs; rows that cannot be used raise one RequestError naming each."""
    images, rows, frames, problems = [], [], [], []
    for row, value in enumerate(request_values(frame, max_rows=predictor.limits.max_frames)):
        try:
            limits = request_limits(predictor.limits, len(images))  # a full request decodes no further row
            pictures = predictor.pictures(decode_base64(value, max_bytes=limits.max_file_bytes), limits=limits)
            images.extend(predictor.images_of(pictures))
        except Exception as exc:  # one row's problem, whatever it is: the other rows and the server go on
            if not isinstance(exc, (BrainTumorError, ImageProblem)):
                log.warning("row %d could not be prepared", row, exc_info=True)  # for the server's log only
            problems.append((row, problem_of(exc)))
            continue
        rows.extend([row] * len(pictures.numbers))
        frames.extend(pictures.numbers)
    if problems:
        listed = "; ".join(f"row {row}: {reason}" for row, reason in problems[:10])
        more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise RequestError(f"{len(problems)} of {len(frame)} rows cannot be used: {listed}{more}", problems)
    table = predictor.table(*predictor.predict(images))
    table.insert(0, "frame", frames)
    table.insert(0, "row", rows)
    return table


def request_values(frame: pd.DataFrame, *, max_rows: int) -> list:
    """The request's column `image`, one value per row; a request without it, or of more than `max_rows` rows
    (data.max_frames: every row holds at least one picture, so more rows could never all be answered), is a
    RequestError, raised before any row is decoded."""
    if not isinstance(frame, pd.DataFrame) or INPUT_COLUMN not in frame.columns:
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise RequestError(
            f"the request needs a column {INPUT_COLUMN!r} of base64-encoded image bytes; got columns {got}"
        )
    if len(frame) > max_rows:
        raise RequestError(
            f"{len(frame):,} rows in one request, over data.max_frames={max_rows:,} pictures in one request "
            f"(each row holds at least one); send at most {max_rows:,} rows per request"
        )
    return frame[INPUT_COLUMN].tolist()


def request_limits(limits: ImageLimits, pictures: int) -> ImageLimits:
    """The limits for a request's next row once its earlier rows hold `pictures`: data.max_frames bounds the
    pictures of the whole request (frames x rows), so that one request's work stays within the server's timeout,
    which does not stop work already started. Raises ImageProblem when the request is already full."""
    if pictures >= limits.max_frames:
        raise ImageProblem(
            f"the request's earlier rows already hold {pictures:,} pictures: over "
            f"data.max_frames={limits.max_frames:,} pictures in one request; send fewer rows (or "
            "frames) per request"
        )
    return dataclasses.replace(limits, frames_used=pictures)


def decode_base64(value: object, *, max_bytes: int) -> bytes:
    """A row's value -> the image file's bytes. Line breaks (as `base64` wraps its output) are allowed.

    A value that would decode to more than `max_bytes` (data.max_file_bytes) is refused before it is decoded.
    """
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", errors="replace")
    missing = value is None or (isinstance(value, float) and np.isnan(value))  # JSON null arrives as None or NaN
    if missing or (isinstance(value, str) and not value.strip()):
        raise RequestError("empty value; send the image file's bytes, base64-encoded")
    if not isinstance(value, str):
        raise RequestError(
            f"a value of type {type(value).__name__}, not a string; send the image file's bytes, base64-encoded"
        )
    text = "".join(value.split())
    check_file_size(len(text) // 4 * 3 - text[-2:].count("="), max_bytes)  # before decoding: 3 bytes per 4 chars
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("not valid base64; encode the image file's bytes with base64") from None
    if not data:
        raise RequestError("empty image (0 bytes after base64 decoding)")
    return data
