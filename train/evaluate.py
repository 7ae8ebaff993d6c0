"""Evaluate a run's best checkpoint on the test split: a table, test_report.json and the task's plot
(confusion.png for single-label, genre_ap.png for multilabel; see :mod:`train.tasks`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from shards import atomic_write_text
from train.checkpoint import BEST, load_checkpoint
from train.config import ConfigError
from train.dataset import ShardDataset
from train.inference import chunk_frames_of, evaluation_source, load_model, predict_scores, resolve_device
from train.tasks import task_from_checkpoint

REPORT_NAME = "test_report.json"


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
    task = task_from_checkpoint(checkpoint)
    dataset = ShardDataset(
        shards_dir, split, image=checkpoint["config"].get("image", "mel"), target=task.dataset_target
    )
    _check_compatible(dataset, checkpoint, shards_dir)
    task.check_dataset(dataset)
    model = load_model(checkpoint, device)
    source = evaluation_source(dataset, batch_size, device, checkpoint["normalization"])
    scores, targets = predict_scores(
        model,
        source,
        device,
        desc=split,
        chunk_frames=chunk_frames_of(checkpoint),
        probabilities=task.probabilities,
    )
    report = task.report(targets, scores, dataset.labels)
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
    task.save_plot(run_dir / task.plot_name, report, checkpoint["model"]["name"], split)
    print(task.format_table(report))
    print(f"report: {run_dir / REPORT_NAME}\n{task.plot_what}: {run_dir / task.plot_name}")
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
