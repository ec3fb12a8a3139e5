"""What the page shows for one uploaded file, and the model facts in its header, built on `braintumor predict`'s
own code (predict.read_scan, predict.table_of, Predictor): no second copy of preprocessing, calibration, novelty or
Grad-CAM, so the page's numbers are predict's and the served model's.

Nothing here knows about HTTP (server.py does). Uploads arrive as bytes and are never written to disk; the
prepared pictures (S x S uint8, after head crop and intensity window) of the last scans are kept in memory, under
a random id and within `PictureStore.max_bytes`, so that the page can ask for a slice's picture and Grad-CAM when
it shows that slice. No file name reaches the server: the page keeps the names.
"""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from braintumor.model.predictor import Predictor
from braintumor.predict import CSV_FLOAT_FORMAT, MIN_HEAD_FRACTION, read_scan, table_of
from braintumor.serving.prediction_log import ModelIdentity, PredictionLog, log_answers

DISCLAIMER = "Research use; not a medical device."
UPLOAD_NAME = Path("upload")  # what read_scan is told the file is called: the server never sees its name


@dataclass
class Stored:
    images: list[np.ndarray]  # (S, S) uint8 per picture, as the network's preset receives them
    labels: list[str]  # each picture's predicted label: what its Grad-CAM explains (as predict --gradcam)

    @property
    def nbytes(self) -> int:
        return sum(image.nbytes for image in self.images)


class PictureStore:
    """The prepared pictures of the latest scans, oldest dropped first once they hold more than `max_bytes`
    (the newest scan is always kept). Thread-safe."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._scans: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, stored: Stored) -> str:
        scan_id = secrets.token_urlsafe(12)
        with self._lock:
            self._scans[scan_id] = stored
            while len(self._scans) > 1 and sum(s.nbytes for s in self._scans.values()) > self.max_bytes:
                self._scans.popitem(last=False)
        return scan_id

    def get(self, scan_id: str) -> Stored | None:
        with self._lock:
            return self._scans.get(scan_id)


class Answers:
    """One Predictor behind the page. The network is used by one request at a time (Grad-CAM hooks its layers).

    With a `prediction_log` (BRAINTUMOR_PREDICTION_LOG), each answered picture is logged as the served model and
    predict log theirs (prediction_log.py: the file's SHA-256, never its name or pixels), with source "app"."""

    def __init__(
        self,
        predictor: Predictor,
        store: PictureStore | None = None,
        *,
        prediction_log: PredictionLog | None = None,
        identity: ModelIdentity | None = None,
    ) -> None:
        self.predictor = predictor
        self.store = store or PictureStore()
        self.prediction_log = prediction_log
        self.identity = identity
        self._model_lock = threading.Lock()

    def answer(self, data: bytes) -> dict[str, Any]:
        """One file's bytes -> its pictures' answers, a volume's summary and predict's CSV rows for it.

        Raises ImageProblem (or BrainTumorError) for a file that cannot be used, as predict's `skipped` says."""
        start = time.perf_counter()
        scan = read_scan(self.predictor, UPLOAD_NAME, data=data)
        with self._model_lock:
            probs, novelty = self.predictor.predict(scan.images)  # (N, C), (N,) | None
        table = table_of(self.predictor, [scan], probs, novelty)
        per_picture, summary = table[table["frame"].notna()], table[table["frame"].isna()]
        if self.prediction_log is not None and self.identity is not None:
            novelty_model = self.predictor.novelty
            log_answers(  # never raises: a log that cannot be written costs a warning, not the answer
                per_picture.assign(row=0),
                [data],
                self.predictor.classes,
                self.identity,
                latency_s=time.perf_counter() - start,
                source="app",
                novelty_quantile=novelty_model.quantile if novelty_model else None,
                prediction_log=self.prediction_log,
            )
        scan_id = self.store.add(Stored(scan.images, list(per_picture["label"])))
        csv = table.drop(columns="file").to_csv(index=False, float_format=CSV_FLOAT_FORMAT).splitlines()
        heads = scan.shows_head
        pictures = [
            {**self._row(row), "shows_head": None if heads is None else bool(heads[i])}
            for i, row in enumerate(per_picture.to_dict(orient="records"))
        ]
        answer = {
            "scan": scan_id,
            "kind": scan.pictures.kind,
            "description": scan.pictures.description,
            "volume": scan.pictures.is_volume,
            "several": scan.several,
            "pictures": pictures,
            "summary": None,
            "csv_header": csv[0],
            "csv_rows": csv[1:],
        }
        if len(summary):
            answer["summary"] = {
                **self._row(summary.to_dict(orient="records")[0]),
                "slices_used": int(sum(heads)),
                "slices": len(heads),
            }
        elif heads is not None:
            answer["no_head"] = (
                f"no slice shows a head (head region >= {MIN_HEAD_FRACTION:.0%} of the slice); no volume summary"
            )
        return answer

    def _row(self, values: dict[str, Any]) -> dict[str, Any]:
        novelty = values.get("novelty")
        return {
            "frame": None if pd.isna(values["frame"]) else int(values["frame"]),
            "label": values["label"],
            "probability": float(values["probability"]),
            "probabilities": {name: float(values[name]) for name in self.predictor.classes},
            "novelty": None if novelty is None else float(novelty),
            "unlike_training": None if novelty is None else bool(values["unlike_training"]),
        }

    def picture_png(self, scan_id: str, index: int) -> bytes | None:
        """The centre crop the network sees of one picture (grayscale PNG), or None when it is no longer kept."""
        stored = self._picture(scan_id, index)
        return None if stored is None else _png(self.predictor.transform.crop(stored.images[index]))

    def gradcam_png(self, scan_id: str, index: int) -> bytes | None:
        """The Grad-CAM heat map of one picture's label (RGB PNG of the crop's size), for the page to lay over
        `picture_png` at the opacity a user picks: at 0.45 it is `predict --gradcam`'s overlay."""
        stored = self._picture(scan_id, index)
        if stored is None:
            return None
        with self._model_lock:
            heat = self.predictor.explain(stored.images[index], stored.labels[index], alpha=1.0)
        return _png(heat)

    def _picture(self, scan_id: str, index: int) -> Stored | None:
        stored = self.store.get(scan_id)
        return stored if stored is not None and 0 <= index < len(stored.images) else None


def model_facts(model: str, path: Path, predictor: Predictor) -> dict[str, Any]:
    """The page's header: which model answers (name, version, aliases, training date, data hash), its model card
    (the text, when one is found), the classes, the limits and the disclaimer."""
    from braintumor.tracking.runs import registered_version

    registered = registered_version(model) if model.startswith("models:/") else None
    if registered:
        facts = {
            "name": registered["name"],
            "version": registered["version"],
            "aliases": registered["aliases"],
            "trained": _utc(registered["registered"] / 1000),
            "trained_note": "registered",
            "data_hash": registered["data_dvc_hash"],
            "git_commit": registered["git_commit"],
        }
    else:
        facts = {
            "name": path.name,
            "version": None,
            "aliases": [],
            "trained": _utc(path.stat().st_mtime),
            "trained_note": "model file written",
            "data_hash": None,
            "git_commit": None,
        }
    card = model_card_of(path, predictor.bundle.get("params", {}))
    novelty = predictor.novelty
    return {
        **facts,
        "source": model,
        "classes": predictor.classes,
        "disclaimer": DISCLAIMER,
        "card": card.read_text(encoding="utf-8") if card else None,
        "novelty_quantile": novelty.quantile if novelty else None,
        "max_file_bytes": predictor.limits.max_file_bytes,
        "max_image_pixels": predictor.limits.max_pixels,
    }


def model_card_of(path: Path, params: dict) -> Path | None:
    """A registered version's card sits in its artifacts (beside the MLmodel file, above artifacts/model.pt); the
    pipeline's own model file (paths.model) has it at paths.model_card (from the working folder, the repository)."""
    candidates = [path.parent / "model_card.md", path.parent.parent / "model_card.md"]
    paths = params.get("paths", {})
    if paths.get("model") and paths.get("model_card") and Path(paths["model"]).resolve() == path.resolve():
        candidates.append(Path(paths["model_card"]))
    return next((card for card in candidates if card.is_file()), None)


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()
