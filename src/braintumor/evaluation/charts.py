"""matplotlib charts for the report and MLflow; each returns a Figure (the caller saves or embeds it)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def training_curves(history: pd.DataFrame) -> plt.Figure:
    fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.4))
    epochs = history["epoch"]
    loss_ax.plot(epochs, history["train_loss"], "o-", label="train")
    loss_ax.plot(epochs, history["val_loss"], "o-", label="val")
    loss_ax.set(title="Loss (cross-entropy)", xlabel="epoch")
    loss_ax.set_yscale("log")
    acc_ax.plot(epochs, history["train_accuracy"], "o-", label="train accuracy")
    acc_ax.plot(epochs, history["val_accuracy"], "o-", label="val accuracy")
    acc_ax.plot(epochs, history["val_macro_f1"], "s--", label="val macro-F1")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylim=(0, 1.02))
    lr_ax.plot(epochs, history["lr"], "o-", color="tab:purple")
    lr_ax.set(title="Learning rate", xlabel="epoch")
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    lr_ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_matrices(matrix: np.ndarray, classes: list[str]) -> plt.Figure:
    """Counts and row-normalised (recall per actual class) side by side."""
    short = [c.replace("_tumor", "") for c in classes]
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, values, title, fmt in ((axes[0], matrix, "Counts", "d"), (axes[1], normalised, "Row-normalised", ".2f")):
        ax.imshow(values, cmap="Blues", vmin=0)
        ax.set(
            xticks=range(len(classes)),
            yticks=range(len(classes)),
            xticklabels=short,
            yticklabels=short,
            xlabel="predicted",
            ylabel="actual",
            title=title,
        )
        peak = values.max() if values.size else 1
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                ax.text(
                    j,
                    i,
                    format(values[i, j], fmt),
                    ha="center",
                    va="center",
                    color="white" if values[i, j] > peak / 2 else "black",
                    fontsize=9,
                )
    fig.tight_layout()
    return fig


def reliability_diagram(table: pd.DataFrame, ece: float | None) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    filled = table[table["count"] > 0]
    width = float(table["bin_upper"].iloc[0] - table["bin_lower"].iloc[0])
    ax.bar(
        filled["bin_lower"],
        filled["accuracy"],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot(filled["confidence"], filled["accuracy"], "o", color="tab:red", ms=4, label="bin mean confidence")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (max probability)",
        ylabel="accuracy",
        title=f"Reliability (ECE {ece:.3f})" if ece is not None else "Reliability",
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def roc_curves(table: pd.DataFrame) -> plt.Figure:
    """table: long form, columns `class`, `fpr`, `tpr` (evaluation.roc_table); one line per class."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    for name, curve in table.groupby("class", sort=False):
        ax.plot(curve["fpr"], curve["tpr"], label=name)
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one class vs rest")
    if not table.empty:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(
    images: list[np.ndarray], captions: list[str], *, columns: int = 6, colors: list[str] | None = None
) -> plt.Figure:
    """Scans (H, W) or pictures (H, W, 3) in a grid with a caption under each."""
    count = max(1, len(images))
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.9 * rows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k], cmap="gray" if images[k].ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(captions[k], fontsize=7, color=(colors[k] if colors else "black"))
    fig.tight_layout()
    return fig
