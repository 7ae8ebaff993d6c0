"""Per-mel-band standardisation, written once: statistics, the stored form, the application.

A model is trained on images standardised per mel band with the training
split's mean and standard deviation, and every later use of that model
(validation, ``train test``, ``train predict``, benchmarks) applies the same
statistics, read from the checkpoint. Stored form (in checkpoints)::

    {"mean": torch.Tensor (128,) float32, "std": torch.Tensor (128,) float32}   or None

``None`` means the model was trained on raw log-mel images (``--no-normalize``).
"""

from __future__ import annotations

import numpy as np
import torch

N_MELS = 128
_STATS_BLOCK = 256
MIN_STD = 1e-3


def band_statistics(dataset) -> dict:
    """Mean and standard deviation of each mel band over a whole split.

    Parameters
    ----------
    dataset : train.dataset.ShardDataset
        Read in blocks of 256 images through ``dataset.gather`` (raw images).

    Returns
    -------
    dict
        ``{"mean": (128,), "std": (128,)}`` float32 tensors; std is at least 1e-3.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("band_statistics of an empty split")
    total = np.zeros(N_MELS, np.float64)
    total_sq = np.zeros(N_MELS, np.float64)
    for start in range(0, n, _STATS_BLOCK):
        x, _ = dataset.gather(np.arange(start, min(start + _STATS_BLOCK, n)))
        block = x.numpy()[:, 0].astype(np.float64)  # (B, 128, T)
        total += block.sum(axis=(0, 2))
        total_sq += (block**2).sum(axis=(0, 2))
    count = n * x.shape[-1]
    mean = total / count
    std = np.maximum(np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)), MIN_STD)
    return {
        "mean": torch.from_numpy(mean.astype(np.float32)),
        "std": torch.from_numpy(std.astype(np.float32)),
    }


def to_device(normalization: dict | None, device: torch.device) -> dict | None:
    """The statistics as float32 tensors on ``device`` (None stays None)."""
    if normalization is None:
        return None
    return {
        key: torch.as_tensor(normalization[key]).to(device, torch.float32).reshape(-1)
        for key in ("mean", "std")
    }


def standardize(x: torch.Tensor, normalization: dict | None, *, inplace: bool = False) -> torch.Tensor:
    """``(x - mean[band]) / std[band]`` for images whose mel-band axis is the second last.

    Parameters
    ----------
    x : torch.Tensor, shape (..., 128, T), float32
        E.g. a batch (B, 1, 128, 128) or one image (128, 128).
    normalization : dict or None
        As stored in checkpoints (see module doc); None returns ``x`` unchanged.
        Put it on ``x``'s device first with :func:`to_device` when called per batch.
    inplace : bool
        Overwrite ``x`` (saves a copy of a whole preloaded split).
    """
    if normalization is None:
        return x
    mean = torch.as_tensor(normalization["mean"]).to(x.device, torch.float32)[:, None]
    std = torch.as_tensor(normalization["std"]).to(x.device, torch.float32)[:, None]
    if inplace:
        return x.sub_(mean).div_(std)
    return (x - mean) / std
