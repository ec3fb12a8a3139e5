"""The augmentation preview: a few training scans per class, each as the model's eval view and augmented views
made by the very train preset that training uses (transforms.train_preset), deterministically from a seed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from braintumor.config import AugmentConfig  # noqa: E402
from braintumor.data.cache import load_square  # noqa: E402
from braintumor.transforms import Preprocessing, display_preset, eval_preset  # noqa: E402


def preview_figure(train_rows: pd.DataFrame, data_root: str | Path, classes: list[str], prep: Preprocessing,
                   augment: AugmentConfig, *, max_pixels: int) -> plt.Figure:
    rng = np.random.default_rng(augment.preview_seed)
    picks = []
    for label in classes:
        candidates = train_rows[train_rows["label"] == label]["path"].tolist()
        count = min(augment.preview_images_per_class, len(candidates))
        picks += [(label, p) for p in sorted(rng.choice(candidates, size=count, replace=False))]
    views = display_preset(prep, augment)
    eval_view = eval_preset(prep)
    draws = torch.Generator().manual_seed(augment.preview_seed)  # its own generator: deterministic, side-effect free
    cols = augment.preview_views + 1
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.9 * cols, 2.0 * len(picks)), squeeze=False)
    for row, (label, path) in enumerate(picks):
        square = torch.from_numpy(load_square(Path(data_root) / path, prep.resize_size, max_pixels))[None]  # (1,S,S)
        augmented = views(square.expand(augment.preview_views, 1, -1, -1), draws)  # (V, 1, H, W) uint8
        images = [eval_view.crop(square)] + list(augmented)
        for col, image in enumerate(images):
            ax = axes[row, col]
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"{label}\n{Path(path).name[:22]}", fontsize=7)
            if row == 0:
                ax.set_title("eval view" if col == 0 else f"train view {col}", fontsize=8)
    fig.suptitle(f"Train preset: crop scale {augment.crop_scale}, hflip {augment.hflip}, rotation "
                 f"±{augment.rotation_degrees:g}°, brightness {augment.brightness:g}, contrast {augment.contrast:g}",
                 fontsize=9)
    fig.tight_layout()
    return fig
