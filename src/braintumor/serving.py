"""Predictions from a model file: the core of `braintumor predict` and of the served MLflow model.

Input rows are raw file bytes (JPEG, PNG, BMP, TIFF, WebP, GIF; grayscale, RGB, RGBA, 16-bit; DICOM; NIfTI); the
output has one row per picture: the input `row`, the `frame` (of a multi-frame DICOM, or the axial slice of a NIfTI
volume; 0 for a single picture), a label, its probability, one probability column per class and, when the model
file has the score (novelty.py), `novelty` and `unlike_training`. A bad row raises `RequestError` naming the row
and why.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from braintumor.data.cache import draft_size, images_of, load_image
from braintumor.errors import BrainTumorError
from braintumor.imaging import ImageLimits, ImageProblem, check_file_size, problem_of
from braintumor.inference import forward_outputs, probabilities
from braintumor.medical import Pictures, read_pictures
from braintumor.model import Inference, load_model
from braintumor.novelty import Novelty, unlike_training
from braintumor.runtime import prediction_autocast, strict_fp32
from braintumor.transforms import Preprocessing, eval_preset

INPUT_COLUMN = "image"
log = logging.getLogger(__name__)


class RequestError(BrainTumorError):
    """A prediction request that cannot be answered as sent (HTTP 400 when served).

    `rows` holds (row index, reason) for each row that cannot be used (empty when the request as a whole is wrong).
    """

    def __init__(self, message: str, rows: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.rows = list(rows or [])


class Predictor:
    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        precision: str = "fp32",
    ) -> None:
        """`device` as runtime.prediction_device chose it; `precision` fp32, or bf16 / fp16 autocast on CUDA."""
        self.device, self.batch_size = torch.device(device), batch_size
        self.amp_dtype = prediction_autocast(self.device, precision)
        if self.amp_dtype is None:
            strict_fp32(self.device)
        self.model, bundle = load_model(model_path, self.device)
        self.classes: list[str] = list(bundle["classes"])
        self.prep = Preprocessing.from_dict(bundle["preprocessing"])
        self.inference = Inference.from_dict(bundle.get("inference"))
        self.novelty = Novelty.from_dict(bundle.get("novelty"))  # None: a model file without the score
        self.transform = eval_preset(self.prep)
        self.limits = ImageLimits.of(bundle["params"]["data"])
        self.bundle = bundle

    def load_image(self, source: bytes | str | os.PathLike) -> np.ndarray:
        """One scan -> (S, S) uint8, exactly as evaluation sees it. Raises ImageProblem."""
        return load_image(source, self.prep.scan, self.limits)

    def pictures(self, source: bytes | str | os.PathLike, *, limits: ImageLimits | None = None, keep=None) -> Pictures:
        """Every 2-D picture in one file (one; a DICOM's frames; a NIfTI's axial slices). Raises ImageProblem.

        `keep(count)`: the frames of a multi-frame DICOM to decode (medical.read_pictures)."""
        return read_pictures(source, limits=limits or self.limits, draft=draft_size(self.prep.scan), keep=keep)

    def images_of(self, pictures: Pictures) -> list[np.ndarray]:
        """Each picture -> (S, S) uint8, exactly as evaluation sees a scan (`load_image` of a one-picture file)."""
        return images_of(pictures, self.prep.scan)

    def probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, C) class probabilities for (S, S) uint8 images: evaluation's inference, temperature included."""
        return self.predict(images)[0]

    def predict(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, C), novelty (N,) or None when the model file has no score) for (S, S) uint8 images."""
        if not images:
            return np.zeros((0, len(self.classes))), (np.zeros(0) if self.novelty else None)
        batches = (
            (torch.from_numpy(np.stack(images[i : i + self.batch_size]))[:, None], torch.zeros(0))
            for i in range(0, len(images), self.batch_size)
        )  # (B, 1, S, S) uint8, no labels
        out = forward_outputs(
            self.model,
            batches,
            self.device,
            self.transform,
            tta_hflip=self.inference.tta_hflip,
            amp_dtype=self.amp_dtype,
            features=self.novelty is not None,
        )
        novelty = self.novelty.scores(out.features) if self.novelty else None
        return probabilities(out.logits, self.inference.temperature), novelty

    def explain(self, image: np.ndarray, label: str, alpha: float = 0.45) -> np.ndarray:
        """Grad-CAM of `label` for one (S, S) uint8 image: the crop the network sees, with the heat map of where
        the evidence for `label` lies laid over it; (H, W, 3) uint8. For `predict --gradcam` and the report; the
        page (app/) takes the heat map alone (`alpha` 1) and lays it over the crop at the opacity a user picks."""
        from braintumor.explain import grad_cam, overlay  # Grad-CAM only: training never loads it

        tensor = self.transform(torch.from_numpy(image)[None].to(self.device))[None]  # (1, 3, H, W)
        cam, _ = grad_cam(self.model, self.model.layer4, tensor, self.classes.index(label))
        return overlay(self.transform.crop(image), cam, alpha=alpha)

    def table(self, probs: np.ndarray, novelty: np.ndarray | None = None) -> pd.DataFrame:
        best = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
        frame = pd.DataFrame(
            {
                "label": [self.classes[i] for i in best],
                "probability": probs[np.arange(len(best)), best] if len(probs) else [],
            }
        )
        for i, name in enumerate(self.classes):
            frame[name] = probs[:, i] if len(probs) else []
        if novelty is not None:
            frame["novelty"] = np.asarray(novelty, dtype=float)
            frame["unlike_training"] = unlike_training(frame["novelty"].to_numpy())
        return frame

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The served model's predict: column `image` of base64 strings -> label, probability, per-class."""
        images, rows, frames, problems = [], [], [], []
        for row, value in enumerate(request_values(frame, max_rows=self.limits.max_frames)):
            try:
                limits = request_limits(self.limits, len(images))  # a full request decodes no further row
                pictures = self.pictures(decode_base64(value, max_bytes=limits.max_file_bytes), limits=limits)
                images.extend(self.images_of(pictures))
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
        table = self.table(*self.predict(images))
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


def find_images(paths: list[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    """Files given directly, and image files under folders (recursive). Returns (images, missing paths)."""
    from braintumor.imaging import is_candidate

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
