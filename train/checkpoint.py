"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain data only::

    {"format_version": 1,
     "model": {"name", "num_classes", "options"},     # train.models.ModelConfig
     "state_dict": {...}, "optimizer": {...},
     "epoch": completed epochs, "best_metric": float, "metric_name": str,
     "history": [per-epoch dicts], "config": TrainConfig as a dict,
     "class_names": [...], "recipe": {...},            # from the manifest
     "normalization": {"mean": (128,), "std": (128,)} or None,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]}}
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from shards import atomic_path
from shards.errors import FmaGenreError

FORMAT_VERSION = 1
BEST = "best.pt"
LAST = "last.pt"


class CheckpointError(FmaGenreError, ValueError):
    """A checkpoint is missing, truncated, corrupt or not one of ours (a user error: exit 2)."""


def save_checkpoint(path: str | os.PathLike, checkpoint: dict) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **checkpoint}, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: no code runs on load).

    Raises
    ------
    CheckpointError
        Naming the file, if it is missing, truncated, corrupt or of another format.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no checkpoint here. Train first (`make train` / "
            f"`python -m train fit --run {path.parent} ...`)."
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint, it is truncated or corrupt "
            f"({type(exc).__name__}: {str(exc)[:200]}). Use the other checkpoint in the run folder "
            f"(best.pt / last.pt) or retrain."
        ) from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a fma-genre checkpoint of format {FORMAT_VERSION}.")
    missing = [k for k in ("model", "state_dict", "class_names", "recipe", "config") if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}; it was not written by `train fit`.")
    return checkpoint


def rng_state() -> dict:
    """torch's CPU (and CUDA) generator states, to be restored on resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
