"""Seeded per-epoch shuffling and batching, as pure functions of (n, seed, epoch).

Because each epoch's order depends only on ``(seed, epoch)``, a run resumed at
epoch k visits exactly the batches an uninterrupted run would. :func:`balanced_order`
is the class-balanced alternative to :func:`epoch_order` (same length, every class
drawn equally often), a pure function of (labels, seed, epoch) too.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from train.chunks import check_crop, crop_starts


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


def balanced_order(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """One epoch of class-balanced sampling: N draws, each present class ``N // K`` or ``N // K + 1`` times.

    Each class is walked through its own seeded permutations, one after another (a class
    smaller than its share repeats, only after all its samples were drawn; a larger one is
    covered over several epochs: its position carries over from epoch to epoch). The draws are
    then shuffled together.

    Parameters
    ----------
    labels : np.ndarray, shape (N,), int
        Class of every sample of the split.
    seed, epoch : int

    Returns
    -------
    np.ndarray, shape (N,), int64
        Sample indices (with repeats for small classes).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or epoch < 0:
        raise ValueError(f"need 1-d labels and epoch >= 0, got shape {labels.shape}, epoch {epoch}")
    n = len(labels)
    classes = np.unique(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    share, extra = divmod(n, len(classes))
    rng = np.random.default_rng([int(seed), int(epoch), 1])
    lucky = set(rng.choice(len(classes), extra, replace=False).tolist())  # who gets the remainder
    draws = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        want = share + (i in lucky)
        start = epoch * share  # where this epoch starts in the class's endless sequence of permutations
        first, last = start // len(members), (start + want - 1) // len(members)
        cycles = [
            np.random.default_rng([int(seed), int(c), cycle, 2]).permutation(members)
            for cycle in range(first, last + 1)
        ]
        offset = start - first * len(members)
        draws.append(np.concatenate(cycles)[offset : offset + want])
    return rng.permutation(np.concatenate(draws)).astype(np.int64)


def batch_indices(
    order: np.ndarray, batch_size: int, drop_last: bool = False, sort: bool = True
) -> list[np.ndarray]:
    """Cut an order into batches.

    Parameters
    ----------
    order : np.ndarray, shape (N,) or (N, 2)
        Sample indices, or (index, crop start) rows.
    batch_size : int
    drop_last : bool
        Drop a final batch smaller than ``batch_size``.
    sort : bool
        Sort each batch by index, so the gather reads each shard in file order
        (which samples form a batch is unchanged).

    Returns
    -------
    list of np.ndarray, each shape (B,) or (B, 2), int64
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    batches = [np.asarray(order[i : i + batch_size], dtype=np.int64) for i in range(0, stop, batch_size)]
    if not sort:
        return batches
    return [b[np.argsort(b if b.ndim == 1 else b[:, 0], kind="stable")] for b in batches]


class EpochBatchSampler:
    """Yields one index array per batch; ``set_epoch`` picks the epoch's seeded order.

    Used with ``DataLoader(dataset, batch_size=None, sampler=...)`` so that each
    fetch is one ``dataset[index_array]`` gather.

    With ``balance_labels`` (the split's labels, shape (N,)), each epoch is
    :func:`balanced_order` instead of a permutation.

    With ``crop = (width, crop_frames)`` every batch is a (B, 2) array of (index, crop start)
    rows instead, the starts drawn by :func:`train.chunks.crop_starts` for the epoch (a dataset
    opened with ``crop_frames`` reads those crops).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        max_batches: int = 0,
        balance_labels: np.ndarray | None = None,
        crop: tuple[int, int] | None = None,
    ):
        if balance_labels is not None and len(balance_labels) != num_samples:
            raise ValueError(f"balance_labels has {len(balance_labels)} entries for {num_samples} samples")
        if crop is not None:
            check_crop(*crop)
        self.balance_labels = balance_labels
        self.crop = crop
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
        if self.balance_labels is not None:
            order = balanced_order(self.balance_labels, self.seed, self.epoch)
        else:
            order = epoch_order(self.num_samples, self.seed, self.epoch, self.shuffle)
        if self.crop is not None:
            starts = crop_starts(len(order), *self.crop, self.seed, self.epoch)
            order = np.stack([order, starts], axis=1)
        batches = batch_indices(order, self.batch_size, self.drop_last)
        return batches[: self.max_batches] if self.max_batches > 0 else batches

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.batches())

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        count = full + (1 if rest and not self.drop_last else 0)
        return min(count, self.max_batches) if self.max_batches > 0 else count


def rank_part(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The part of one global batch that ``rank`` of ``world_size`` trains on.

    The batch is cut into ``world_size`` contiguous, equal parts and rank ``r`` takes
    part ``r``. When ``len(batch)`` is not a multiple of ``world_size`` (only the last
    batch of an epoch can be, and only when the split is smaller than one batch), its
    last ``len(batch) % world_size`` indices are left out, so every rank holds the same
    number of samples and DistributedDataParallel's gradient average equals the
    gradient of the whole (trimmed) batch.

    Parameters
    ----------
    batch : np.ndarray, shape (B,)
        One global batch of sample indices (as :func:`batch_indices` cuts them).
    rank, world_size : int
        ``0 <= rank < world_size``.

    Returns
    -------
    np.ndarray, shape (B // world_size,), int64
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    per_rank = len(batch) // world_size
    return np.asarray(batch[rank * per_rank : (rank + 1) * per_rank], dtype=np.int64)


def rank_range(num_samples: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous slice ``[start, stop)`` of ``range(num_samples)`` that ``rank`` evaluates.

    The parts cover every sample exactly once, in order, and differ in size by at most one
    (the first ``num_samples % world_size`` ranks hold one more), so concatenating the
    parts in rank order gives back dataset order.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    base, extra = divmod(num_samples, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class RankBatchSampler:
    """This rank's part (:func:`rank_part`) of every global batch of another batch sampler.

    Every rank wraps the same seeded sampler, so all ranks walk the same sequence of
    global batches, whatever the world size, and together cover each of them once.
    """

    def __init__(self, sampler, rank: int, world_size: int):
        rank_part(np.zeros(0, np.int64), rank, world_size)  # validates rank and world_size
        if getattr(sampler, "batch_size", world_size) < world_size:
            raise ValueError(
                f"a global batch of {sampler.batch_size} samples cannot be shared by "
                f"{world_size} ranks: use --batch-size >= {world_size}"
            )
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.sampler:
            yield rank_part(batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return len(self.sampler)


class IndexBatchSampler:
    """Fixed batches of ``batch_size`` over the given indices, in order (a rank's validation part)."""

    def __init__(self, indices: np.ndarray, batch_size: int):
        self.batch_size = batch_size
        self._batches = batch_indices(np.asarray(indices, dtype=np.int64), batch_size, sort=False)

    def set_epoch(self, epoch: int) -> None:
        """The batches are the same every epoch."""

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)
