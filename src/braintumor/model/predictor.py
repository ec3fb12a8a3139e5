"""A model file at work: the one object that turns scans into probabilities, the novelty score and Grad-CAM, with
the preprocessing, TTA and temperature the file carries. Evaluation (Testing, the external set, the champion's
re-scoring), `braintumor predict`, the page, the report and the served model (serving/requests.py) all use it, so
a scan gets the same answer wherever it is asked.

An answer has one row per picture: a label, its probability, one probability column per class and, when the model
file has the score (novelty.py), `novelty` and `unlike_training`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from braintumor.data.cache import draft_size, images_of, load_image
from braintumor.model.inference import forward_outputs, probabilities
from braintumor.model.network import Inference, load_model
from braintumor.model.novelty import Novelty, unlike_training
from braintumor.model.transforms import Preprocessing, eval_preset
from braintumor.runtime import prediction_autocast, strict_fp32
from braintumor.scans.limits import ImageLimits
from braintumor.scans.pictures import Pictures
from braintumor.scans.read import read_pictures

log = logging.getLogger(__name__)


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

        `keep(count)`: the frames of a multi-frame DICOM to decode (scans.read.read_pictures)."""
        return read_pictures(source, limits=limits or self.limits, draft=draft_size(self.prep.scan), keep=keep)

    def images_of(self, pictures: Pictures) -> list[np.ndarray]:
        """Each picture -> (S, S) uint8, exactly as evaluation sees a scan (`load_image` of a one-picture file)."""
        return images_of(pictures, self.prep.scan)

    def probabilities(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, C) class probabilities for (S, S) uint8 images: evaluation's inference, temperature included."""
        return self.predict(images)[0]

    def predict(self, images: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, C), novelty (N,) or None when the model file has no score) for (S, S) uint8 images."""
        logits, novelty = self.outputs(images)
        return self.calibrated(logits), novelty

    def outputs(self, images: Sequence[np.ndarray] | np.ndarray) -> tuple[torch.Tensor, np.ndarray | None]:
        """(logits (N, C) float64 before the temperature, novelty (N,) or None) for (S, S) uint8 images: a list, or
        an (N, S, S) array such as the decoded-image cache's memory map, in batches of `batch_size`."""
        if len(images) == 0:
            return torch.zeros((0, len(self.classes)), dtype=torch.float64), (np.zeros(0) if self.novelty else None)
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
        return out.logits, self.novelty.scores(out.features) if self.novelty else None

    def calibrated(self, logits: torch.Tensor, calibrated: bool = True) -> np.ndarray:
        """(N, C) probabilities from logits, after the model file's temperature (or before it: `calibrated` False)."""
        return probabilities(logits, self.inference.temperature if calibrated else 1.0)

    def explain(self, image: np.ndarray, label: str, alpha: float = 0.45) -> np.ndarray:
        """Grad-CAM of `label` for one (S, S) uint8 image: the crop the network sees, with the heat map of where
        the evidence for `label` lies laid over it; (H, W, 3) uint8. For `predict --gradcam` and the report; the
        page (app/) takes the heat map alone (`alpha` 1) and lays it over the crop at the opacity a user picks."""
        from braintumor.model.explain import grad_cam, overlay  # Grad-CAM only: training never loads it

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
