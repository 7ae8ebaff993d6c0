"""Running a model: device and worker choice, batches on the device, loading, scoring.

Shared by training (:mod:`train.loop`), evaluation (:mod:`train.evaluate`),
prediction (:mod:`train.predict`) and the benchmarks, so that every path runs a
model the same way: images standardised with the checkpoint's statistics
(:mod:`train.normalization`), in channels-last memory (on CPU too: ~1.4x faster
training steps and ~2x faster scoring of the short-chunk CNN than the default
layout, ``bench/channels_last.py``), with bfloat16 autocast on CUDA and float32 on CPU.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shards.cli import progress_disabled
from train.chunks import mean_over_chunks, split_chunks
from train.config import ConfigError
from train.dataset import ShardDataset
from train.ema import inference_state_dict
from train.models import ModelConfig, build_model, output_layers
from train.normalization import standardize, to_device
from train.sampling import EpochBatchSampler


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA device is available to this torch "
            f"({torch.__version__}); use --device cpu or auto"
        )
    if name not in ("cuda", "cpu"):
        raise ConfigError(f"device must be auto, cuda or cpu, got {name!r}")
    return torch.device(name)


def resolve_workers(requested: int, device: torch.device, preload: str) -> int:
    """DataLoader workers: -1 picks 0 on CPU training or machines with <= 4 cores, else 4.

    On a 2-core machine two workers cost more in inter-process copies than they
    gain (bench/dataset.py); on CPU the model, not the loader, is the bottleneck.
    """
    if preload != "none":
        return 0
    if requested >= 0:
        return requested
    if device.type == "cpu" or (os.cpu_count() or 1) <= 4:
        return 0
    return 4


def prepare_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch (B, 1, H, W), 4-D, in channels-last memory like the model (:func:`place_model`), on
    CUDA and on the CPU alike. With one channel that changes no strides; what makes the models
    faster is their channels-last weights, which keep every later activation channels-last."""
    return x.contiguous(memory_format=torch.channels_last)


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA; a no-op context on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device`` with its convolution weights channels-last, matching :func:`prepare_input`."""
    return model.to(device).to(memory_format=torch.channels_last)


def load_model(checkpoint: dict, device: torch.device) -> nn.Module:
    """The checkpoint's model with its weights (the EMA's when it has them), in eval mode on ``device``."""
    model = build_model(ModelConfig(**checkpoint["model"]))
    model.load_state_dict(inference_state_dict(checkpoint))
    return place_model(model, device).eval()


def model_num_classes(model: nn.Module) -> int:
    """Output classes of a model (its last linear layer's width)."""
    return output_layers(model)[0].out_features


class BatchSource:
    """Batches of one split on the device, standardised: a DataLoader over the shard
    Dataset, or (``preload="gpu"``) index gathers from the whole split already on the GPU.

    Parameters
    ----------
    dataset : ShardDataset
    sampler : EpochBatchSampler
        Which indices form each batch of each epoch.
    device : torch.device
    preload : {"none", "ram", "gpu"}
    num_workers : int
        DataLoader workers (see :func:`resolve_workers`).
    seed : int
        Seeds the DataLoader's generator (with the epoch).
    normalization : dict or None
        As stored in checkpoints (:mod:`train.normalization`).
    """

    def __init__(
        self,
        dataset: ShardDataset,
        sampler: EpochBatchSampler,
        device: torch.device,
        preload: str,
        num_workers: int,
        seed: int,
        normalization: dict | None = None,
    ):
        self.dataset, self.sampler, self.device, self.seed = dataset, sampler, device, seed
        self.preload = preload
        self.num_workers = num_workers
        self.images = self.targets = None
        # Standardisation runs on the device after the copy (cheap there, and the
        # loader workers only move raw bytes).
        self.normalization = to_device(normalization, device)
        if preload == "gpu":
            images = torch.from_numpy(dataset.raw_array()).to(device).unsqueeze(1)
            self.images = standardize(images, self.normalization, inplace=True)
            self.targets = torch.from_numpy(dataset.targets).to(device)
        elif preload == "ram":
            dataset.preload()

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int):
        """Iterate ``(x (B, 1, H, W), y (B,))`` on the device for one epoch."""
        self.sampler.set_epoch(epoch)
        if self.images is not None:
            for indices in self.sampler:
                idx = torch.from_numpy(indices).to(self.device, non_blocking=True)
                if idx.ndim == 1:
                    yield self.images.index_select(0, idx), self.targets.index_select(0, idx)
                else:  # (index, crop start) rows: crops gathered on the device
                    yield (
                        crop_rows(self.images, idx, self.dataset.crop_frames),
                        self.targets.index_select(0, idx[:, 0]),
                    )
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=None,
            sampler=self.sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch),
            prefetch_factor=4 if self.num_workers else None,
        )
        for x, y in loader:
            x = standardize(x.to(self.device, non_blocking=True), self.normalization)
            yield x, y.to(self.device, non_blocking=True)


def crop_rows(images: torch.Tensor, pairs: torch.Tensor, crop_frames: int) -> torch.Tensor:
    """Crops (B, 1, H, crop_frames) of ``images`` (N, 1, H, W) at (index, start) ``pairs`` (B, 2)."""
    rows = images.index_select(0, pairs[:, 0])
    frames = pairs[:, 1, None] + torch.arange(crop_frames, device=images.device)  # (B, crop_frames)
    return torch.gather(rows, 3, frames[:, None, None, :].expand(-1, *rows.shape[1:3], -1))


def evaluation_source(
    dataset: ShardDataset, batch_size: int, device: torch.device, normalization: dict | None
) -> BatchSource:
    """A :class:`BatchSource` over the whole split in dataset order (no shuffling, default workers)."""
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False)
    return BatchSource(
        dataset, sampler, device, "none", resolve_workers(-1, device, "none"), 0, normalization
    )


def chunk_frames_of(checkpoint: dict) -> int:
    """The chunk length a checkpoint's model scores images by (its ``crop_frames``; the whole
    image for checkpoints from before chunks existed)."""
    width = int(checkpoint["recipe"].get("n_frames", 128))
    return int(checkpoint["config"].get("crop_frames") or width)


def softmax_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (B, K) float32 of logits (B, K): the single-label task's
    (``train.tasks.Task.probabilities`` is the task's own)."""
    return torch.softmax(logits.float(), dim=1)


def score_batch(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    chunk_frames: int | None = None,
    probabilities=softmax_probabilities,
) -> torch.Tensor:
    """Probabilities (B, K) float32 of a standardised batch (B, 1, H, W) on ``device`` (``probabilities``:
    logits -> probabilities, the task's; softmax by default), or with ``chunk_frames`` the mean of
    each image's chunks' probabilities (:mod:`train.chunks`)."""
    return embed_batch(model, x, device, chunk_frames, probabilities)[0]


def embed_batch(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    chunk_frames: int | None = None,
    probabilities=softmax_probabilities,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (B, K) and penultimate-layer embeddings (B, D), float32, of a standardised
    batch (B, 1, H, W) on ``device``, from one forward pass; with ``chunk_frames`` both are the
    means over each image's chunks."""
    chunks, count = split_chunks(x, chunk_frames or x.shape[-1])
    with torch.no_grad(), autocast(device):
        embedding = model.embed(prepare_input(chunks, device))
        logits = model.classify(embedding)
    return mean_over_chunks(probabilities(logits.float()), count), mean_over_chunks(embedding.float(), count)


def predict_scores(
    model: nn.Module,
    source: BatchSource,
    device: torch.device,
    desc: str = "eval",
    chunk_frames: int | None = None,
    probabilities=softmax_probabilities,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities over a split, in the source's order (eval mode), as :func:`score_batch` gives them.

    Returns
    -------
    scores : np.ndarray, shape (N, K), float32
    targets : np.ndarray, shape (N,) int64 labels, or (N, G) uint8 genre rows (the dataset's target)
    """
    model.eval()
    scores, targets = [], []
    for x, y in tqdm(
        source.epoch(0), total=len(source), desc=desc, leave=False, mininterval=1, disable=progress_disabled()
    ):
        scores.append(score_batch(model, x, device, chunk_frames, probabilities).cpu().numpy())
        targets.append(y.cpu().numpy())
    k = model_num_classes(model)
    return (
        np.concatenate(scores) if scores else np.zeros((0, k), np.float32),
        np.concatenate(targets) if targets else source.dataset.targets[:0].copy(),
    )
