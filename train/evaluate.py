"""Evaluate a run's best checkpoint on the test split: a table, test_report.json, confusion.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from shards import atomic_path, atomic_write_text
from train import metrics
from train.checkpoint import BEST, load_checkpoint
from train.dataset import ShardDataset
from train.models import ModelConfig, build_model

REPORT_NAME = "test_report.json"
PLOT_NAME = "confusion.png"


def load_model(checkpoint: dict, device: torch.device) -> torch.nn.Module:
    """The checkpoint's model with its weights, in eval mode on ``device``."""
    model = build_model(ModelConfig(**checkpoint["model"]))
    model.load_state_dict(checkpoint["state_dict"])
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def build_report(labels: np.ndarray, scores: np.ndarray, class_names: list[str]) -> dict:
    """The test report as plain JSON-able data.

    Parameters
    ----------
    labels : np.ndarray, shape (N,), int64 true classes
    scores : np.ndarray, shape (N, K), class probabilities
    """
    result = metrics.summary(labels, scores.argmax(axis=1), len(class_names), scores)
    per_class = {
        name: {"precision": float(result["precision"][i]), "recall": float(result["recall"][i]),
               "f1": float(result["f1"][i]), "support": int(result["support"][i])}
        for i, name in enumerate(class_names)
    }
    return {
        "num_samples": result["num_samples"],
        "accuracy": result["accuracy"],
        "balanced_accuracy": result["balanced_accuracy"],
        "macro_f1": result["macro_f1"],
        "top3_accuracy": result["top3_accuracy"],
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": result["confusion"].tolist(),
    }


def format_table(report: dict) -> str:
    """A plain-text table of per-class scores and the headline metrics."""
    names = report["class_names"]
    width = max(len("balanced_accuracy"), *(len(n) for n in names))
    lines = [f"{'genre':<{width}}  precision  recall     f1  support"]
    for name in names:
        row = report["per_class"][name]
        lines.append(f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  "
                     f"{row['support']:7d}")
    lines.append("")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy"):
        lines.append(f"{key:<{width}}  {report[key]:.4f}")
    lines.append(f"{'samples':<{width}}  {report['num_samples']}")
    return "\n".join(lines)


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str):
    """A row-normalised confusion matrix figure (matplotlib, Agg).

    Parameters
    ----------
    confusion : np.ndarray, shape (K, K), counts; rows are true classes
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                ax.text(j, i, f"{100 * normalized[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if normalized[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true genre's samples")
    fig.tight_layout()
    return fig


def save_confusion_png(path: str | os.PathLike, confusion: np.ndarray, class_names: list[str],
                       title: str) -> Path:
    """Write the row-normalised confusion plot to ``path`` atomically."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig = confusion_figure(confusion, class_names, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def test(shards_dir: str | os.PathLike, run_dir: str | os.PathLike, device_name: str = "auto",
         checkpoint_name: str = BEST, split: str = "test", batch_size: int = 256) -> dict:
    """Evaluate ``run_dir/checkpoint_name`` on ``split``; write the report and the plot.

    Returns
    -------
    dict
        The report (also written to ``run_dir/test_report.json``).
    """
    from train.loop import BatchSource, predict_scores, resolve_device, resolve_workers
    from train.sampling import EpochBatchSampler

    run_dir = Path(run_dir)
    device = resolve_device(device_name)
    checkpoint = load_checkpoint(run_dir / checkpoint_name)
    dataset = ShardDataset(shards_dir, split)
    if dataset.class_names != checkpoint["class_names"]:
        raise ValueError(f"{shards_dir}: class names {dataset.class_names} differ from the checkpoint's "
                         f"{checkpoint['class_names']}")
    if dataset.recipe != checkpoint["recipe"]:
        raise ValueError(f"{shards_dir}: made with feature recipe {dataset.recipe}, the model was "
                         f"trained on {checkpoint['recipe']}; evaluate on shards of the same recipe")
    if len(dataset) == 0:
        raise ValueError(f"{shards_dir}: the {split} split is empty")
    model = load_model(checkpoint, device)
    source = BatchSource(dataset, EpochBatchSampler(len(dataset), batch_size, shuffle=False), device,
                         "none", resolve_workers(-1, device, "none"), 0, checkpoint["normalization"])
    scores, labels = predict_scores(model, source, device, desc=split)
    report = build_report(labels, scores, dataset.class_names)
    report.update({"split": split, "checkpoint": str(run_dir / checkpoint_name),
                   "epoch": int(checkpoint["epoch"]), "model": checkpoint["model"]["name"],
                   "shards": str(shards_dir)})
    atomic_write_text(run_dir / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    title = (f"{checkpoint['model']['name']} on {split} ({report['num_samples']} tracks): "
             f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    save_confusion_png(run_dir / PLOT_NAME, np.asarray(report["confusion_matrix"]), dataset.class_names,
                       title)
    print(format_table(report))
    print(f"report: {run_dir / REPORT_NAME}\nconfusion plot: {run_dir / PLOT_NAME}")
    return report
