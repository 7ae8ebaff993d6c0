"""Evaluate a run's best checkpoint on the test split: a table, test_report.json, confusion.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from shards import atomic_write_text
from train import metrics
from train.checkpoint import BEST, load_checkpoint
from train.config import ConfigError
from train.dataset import ShardDataset
from train.inference import chunk_frames_of, evaluation_source, load_model, predict_scores, resolve_device
from train.plots import save_confusion_png

REPORT_NAME = "test_report.json"
PLOT_NAME = "confusion.png"


def build_report(labels: np.ndarray, scores: np.ndarray, class_names: list[str]) -> dict:
    """The test report as plain JSON-able data.

    Parameters
    ----------
    labels : np.ndarray, shape (N,), int64 true classes
    scores : np.ndarray, shape (N, K), class probabilities
    """
    result = metrics.summary(labels, scores.argmax(axis=1), len(class_names), scores)
    per_class = {
        name: {
            "precision": float(result["precision"][i]),
            "recall": float(result["recall"][i]),
            "f1": float(result["f1"][i]),
            "support": int(result["support"][i]),
        }
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
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  "
            f"{row['support']:7d}"
        )
    lines.append("")
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy"):
        lines.append(f"{key:<{width}}  {report[key]:.4f}")
    lines.append(f"{'samples':<{width}}  {report['num_samples']}")
    return "\n".join(lines)


def test(
    shards_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    device_name: str = "auto",
    checkpoint_name: str = BEST,
    split: str = "test",
    batch_size: int = 256,
) -> dict:
    """Evaluate ``run_dir/checkpoint_name`` on ``split``; write the report and the plot.

    Returns
    -------
    dict
        The report (also written to ``run_dir/test_report.json``).
    """
    run_dir = Path(run_dir)
    device = resolve_device(device_name)
    checkpoint = load_checkpoint(run_dir / checkpoint_name)
    dataset = ShardDataset(shards_dir, split, image=checkpoint["config"].get("image", "mel"))
    _check_compatible(dataset, checkpoint, shards_dir)
    model = load_model(checkpoint, device)
    source = evaluation_source(dataset, batch_size, device, checkpoint["normalization"])
    scores, labels = predict_scores(
        model, source, device, desc=split, chunk_frames=chunk_frames_of(checkpoint)
    )
    report = build_report(labels, scores, dataset.class_names)
    report.update(
        {
            "split": split,
            "checkpoint": str(run_dir / checkpoint_name),
            "epoch": int(checkpoint["epoch"]),
            "model": checkpoint["model"]["name"],
            "shards": str(shards_dir),
        }
    )
    atomic_write_text(run_dir / REPORT_NAME, json.dumps(report, indent=1) + "\n")
    title = (
        f"{checkpoint['model']['name']} on {split} ({report['num_samples']} tracks): "
        f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}"
    )
    save_confusion_png(
        run_dir / PLOT_NAME, np.asarray(report["confusion_matrix"]), dataset.class_names, title
    )
    print(format_table(report))
    print(f"report: {run_dir / REPORT_NAME}\nconfusion plot: {run_dir / PLOT_NAME}")
    return report


def _check_compatible(dataset: ShardDataset, checkpoint: dict, shards_dir) -> None:
    """The split must have the checkpoint's classes and feature recipe, and not be empty."""
    if dataset.class_names != checkpoint["class_names"]:
        raise ConfigError(
            f"{shards_dir}: class names {dataset.class_names} differ from the checkpoint's "
            f"{checkpoint['class_names']}; evaluate on shards of the same class list"
        )
    if dataset.recipe != checkpoint["recipe"]:
        raise ConfigError(
            f"{shards_dir}: made with feature recipe {dataset.recipe}, the model was "
            f"trained on {checkpoint['recipe']}; evaluate on shards of the same recipe"
        )
    if len(dataset) == 0:
        raise ConfigError(f"{shards_dir}: the {dataset.split} split is empty")
