"""The confusion-matrix plot: a matplotlib figure, a PNG file, an RGB image for TensorBoard.

matplotlib is imported on first use (with the non-interactive Agg backend), so
importing this module costs nothing until a plot is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from shards import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str):
    """A row-normalised confusion matrix figure (matplotlib, Agg).

    Parameters
    ----------
    confusion : np.ndarray, shape (K, K), counts; rows are true classes
    """
    plt = _pyplot()
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    k = len(class_names)
    size = max(5.0, 0.55 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=100)
    image = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=9)
    ax.set_yticklabels([f"{n} ({int(r)})" for n, r in zip(class_names, rows[:, 0], strict=True)], fontsize=9)
    ax.set_xlabel("predicted genre")
    ax.set_ylabel("true genre (test samples)")
    ax.set_title(title)
    for i in range(k):
        for j in range(k):
            if normalized[i, j] >= 0.005:
                ax.text(
                    j,
                    i,
                    f"{100 * normalized[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if normalized[i, j] > 0.5 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true genre's samples")
    fig.tight_layout()
    return fig


def save_confusion_png(
    path: str | os.PathLike, confusion: np.ndarray, class_names: list[str], title: str
) -> Path:
    """Write the row-normalised confusion plot to ``path`` atomically."""
    path = Path(path)
    fig = confusion_figure(confusion, class_names, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return path


def confusion_image(confusion: np.ndarray, class_names: list[str], title: str) -> np.ndarray:
    """The confusion plot as an RGB array (H, W, 3) uint8, for TensorBoard."""
    fig = confusion_figure(confusion, class_names, title)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    _pyplot().close(fig)
    return image
