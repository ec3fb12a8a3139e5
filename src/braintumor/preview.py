"""The augmentation preview: a few training scans per class, each as stored, after preprocessing (the model's eval
view) and in augmented views made by the very train preset that training uses (transforms.train_preset),
deterministically from a seed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from braintumor.config import AugmentConfig  # noqa: E402
from braintumor.data.cache import load_image  # noqa: E402
from braintumor.errors import DataError  # noqa: E402
from braintumor.model.transforms import Preprocessing, display_preset, eval_preset  # noqa: E402
from braintumor.scans.limits import ImageLimits, problem_of  # noqa: E402
from braintumor.scans.read import decode_grayscale


def preview_figure(
    train_rows: pd.DataFrame,
    data_root: str | Path,
    classes: list[str],
    prep: Preprocessing,
    augment: AugmentConfig,
    *,
    limits: ImageLimits,
) -> plt.Figure:
    rng = np.random.default_rng(augment.preview_seed)
    picks = []
    for label in classes:
        candidates = train_rows[train_rows["label"] == label]["path"].tolist()
        count = min(augment.preview_images_per_class, len(candidates))
        picks += [(label, p) for p in sorted(rng.choice(candidates, size=count, replace=False))]
    views = display_preset(prep, augment)
    eval_view = eval_preset(prep)
    draws = torch.Generator().manual_seed(augment.preview_seed)  # its own generator: deterministic, side-effect free
    cols = augment.preview_views + 2
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.9 * cols, 2.0 * len(picks)), squeeze=False)
    titles = ["scan as stored", "preprocessed\n(eval view)"] + [f"train view {i + 1}" for i in range(cols - 2)]
    for row, (label, path) in enumerate(picks):
        stored, prepared = _load(Path(data_root) / path, prep, limits)
        augmented = views(prepared.expand(augment.preview_views, 1, -1, -1), draws)  # (V, 1, H, W) uint8
        images = [stored, eval_view.crop(prepared)[0].numpy()] + [view[0].numpy() for view in augmented]
        for col, image in enumerate(images):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{label}\n{Path(path).name[:22]}", fontsize=7)
            if row == 0:
                ax.set_title(titles[col], fontsize=8)
    scan = prep.scan
    fig.suptitle(
        f"Preprocessing: head crop {scan.head_crop}, intensity {scan.intensity}.\nTrain preset: crop scale "
        f"{augment.crop_scale}, hflip {augment.hflip}, rotation ±{augment.rotation_degrees:g}°, brightness "
        f"{augment.brightness:g}, contrast {augment.contrast:g}, intensity curve "
        f"{augment.intensity_curve:g}, gamma {augment.gamma:g}, blur/sharpen {augment.blur_sharpen:g}, "
        f"noise {augment.noise:g}",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _load(path: Path, prep: Preprocessing, limits: ImageLimits) -> tuple[np.ndarray, torch.Tensor]:
    """(the scan as stored, (1, S, S) after preprocessing); a file changed since validate is a DataError."""
    try:
        stored = np.asarray(decode_grayscale(path, limits=limits))  # before preprocessing
        return stored, torch.from_numpy(load_image(path, prep.scan, limits))[None]
    except Exception as exc:
        raise DataError(
            f"{path} can no longer be read ({problem_of(exc)}); it changed after the validate stage "
            "ran. Rerun the pipeline: `dvc repro`."
        ) from None
