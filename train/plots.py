"""The test plots: the confusion matrix (single-label) and the per-genre average precision
(multi-label), as matplotlib figures, PNG files and (the confusion matrix) an RGB image for TensorBoard.

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


def genre_ap_figure(
    ap: np.ndarray, titles: list[str], top_levels: list[str], support: np.ndarray, title: str
):
    """Per-genre average precision, sorted, one horizontal bar per genre coloured by its top-level genre.

    Parameters
    ----------
    ap : np.ndarray, shape (K,), AP per genre (NaN: no positive test track; left out)
    titles, top_levels : K genre titles and the titles of their top-level genres
    support : np.ndarray, shape (K,), positive test tracks per genre (shown beside the name)
    """
    plt = _pyplot()
    ap = np.asarray(ap, dtype=np.float64)
    shown = [j for j in np.argsort(-np.nan_to_num(ap, nan=-1.0), kind="stable") if np.isfinite(ap[j])]
    tops = sorted({top_levels[j] for j in shown})
    cmap = plt.get_cmap("tab20")  # dark shades first, then the light ones: neighbours differ
    colour = {t: cmap((2 * i) % 20 + (2 * i // 20) % 2) for i, t in enumerate(tops)}
    fig, ax = plt.subplots(figsize=(8.0, max(3.0, 0.22 * len(shown) + 1.5)), dpi=100)
    y = np.arange(len(shown))
    ax.barh(y, [ap[j] for j in shown], color=[colour[top_levels[j]] for j in shown])
    ax.set_yticks(y)
    ax.set_yticklabels([f"{titles[j]} ({int(support[j])})" for j in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("average precision on the test split")
    ax.set_ylabel("genre (positive test tracks)")
    ax.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour[t]) for t in tops]
    ax.legend(handles, tops, title="top-level genre", fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def save_genre_ap_png(
    path: str | os.PathLike,
    ap: np.ndarray,
    titles: list[str],
    top_levels: list[str],
    support: np.ndarray,
    title: str,
) -> Path:
    """Write the per-genre average-precision plot (:func:`genre_ap_figure`) to ``path`` atomically."""
    path = Path(path)
    fig = genre_ap_figure(ap, titles, top_levels, support, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    _pyplot().close(fig)
    return path
