"""Seeded per-epoch shuffling and batching, as pure functions of (n, seed, epoch).

Because each epoch's order depends only on ``(seed, epoch)``, a run resumed at
epoch k visits exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The sample order of one epoch.

    Returns
    -------
    np.ndarray, shape (num_samples,), int64
        A permutation of ``range(num_samples)`` (identity when ``shuffle`` is False).
    """
    if num_samples < 0 or epoch < 0:
        raise ValueError(f"need num_samples >= 0 and epoch >= 0, got {num_samples}, {epoch}")
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.permutation(num_samples).astype(np.int64)


def batch_indices(order: np.ndarray, batch_size: int, drop_last: bool = False,
                  sort: bool = True) -> list[np.ndarray]:
    """Cut an order into batches.

    Parameters
    ----------
    order : np.ndarray, shape (N,)
    batch_size : int
    drop_last : bool
        Drop a final batch smaller than ``batch_size``.
    sort : bool
        Sort the indices inside each batch, so the gather reads each shard in
        file order (which samples form a batch is unchanged).

    Returns
    -------
    list of np.ndarray, each shape (B,), int64
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    batches = [np.asarray(order[i:i + batch_size], dtype=np.int64) for i in range(0, stop, batch_size)]
    return [np.sort(b) for b in batches] if sort else batches


class EpochBatchSampler:
    """Yields one index array per batch; ``set_epoch`` picks the epoch's seeded order.

    Used with ``DataLoader(dataset, batch_size=None, sampler=...)`` so that each
    fetch is one ``dataset[index_array]`` gather.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int = 0,
                 drop_last: bool = False, max_batches: int = 0):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.max_batches = max_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)
        batches = batch_indices(order, self.batch_size, self.drop_last)
        return batches[: self.max_batches] if self.max_batches > 0 else batches

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches())

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        count = full + (1 if rest and not self.drop_last else 0)
        return min(count, self.max_batches) if self.max_batches > 0 else count
