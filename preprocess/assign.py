"""Which tracks go into which shard: a pure function of the selected metadata.

Per split, the sorted track ids are cut into ``ceil(n / shard_size)`` shards of
near-equal size (they differ by at most one track), named
``shards.shard_name(split, k, num_shards)``. Any process that reads the same
tracks.csv with the same options computes the same assignment, so shards can be
made in any order, by any machine, and a rerun knows exactly what is missing.

Granularity. One shard = one task of the process pool (or dask / SLURM array
task). The default shard size, 256 tracks, is chosen so that a big node stays
busy: fma_large's ~48k top-genre tracks give ~190 shards, about 3 shards per
worker on 64 cores (the last wave still fills ~60 of 64 workers), each shard
~10-15 s of work, so no worker waits long for a straggler. Tasks are handed out
one at a time, train shards first, as workers free up. A shard's images take
256 x 64 KiB = 16 MiB in a worker. With 1000-track shards fma_large would give
~50 shards: 14 of 64 cores idle for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass

from shards import SPLITS, shard_name

DEFAULT_SHARD_SIZE = 256


@dataclass(frozen=True)
class ShardSpec:
    """One shard's planned contents.

    Attributes
    ----------
    name : str
        File name, e.g. ``train-00003-of-00050.h5``.
    split : str
    shard_index, num_shards : int
    track_ids : tuple of int, strictly increasing
    labels : tuple of int, one class index per track (-1: none, target genres_all)
    genres : tuple of tuples of int, or None
        Target genres_all: each track's genre ids (``genres_all`` with ancestors); None otherwise
        (and then absent from :meth:`to_dict`, so a default plan is what it always was).
    """

    name: str
    split: str
    shard_index: int
    num_shards: int
    track_ids: tuple[int, ...]
    labels: tuple[int, ...]
    genres: tuple[tuple[int, ...], ...] | None = None

    def to_dict(self) -> dict:
        data = {
            "name": self.name,
            "split": self.split,
            "shard_index": self.shard_index,
            "num_shards": self.num_shards,
            "track_ids": list(self.track_ids),
            "labels": list(self.labels),
        }
        if self.genres is not None:
            data["genres"] = [list(g) for g in self.genres]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ShardSpec:
        return cls(
            name=data["name"],
            split=data["split"],
            shard_index=int(data["shard_index"]),
            num_shards=int(data["num_shards"]),
            track_ids=tuple(int(t) for t in data["track_ids"]),
            labels=tuple(int(x) for x in data["labels"]),
            genres=None if "genres" not in data else tuple(tuple(int(g) for g in x) for x in data["genres"]),
        )


def assign_shards(
    tracks: dict[str, list[tuple[int, int]]],
    shard_size: int = DEFAULT_SHARD_SIZE,
    genres: dict[int, tuple[int, ...]] | None = None,
) -> list[ShardSpec]:
    """Cut each split's sorted tracks into near-equal shards.

    Parameters
    ----------
    tracks : dict
        split -> list of (track_id, label); any order, ids unique across splits.
    shard_size : int
        Maximum tracks per shard (>= 1).
    genres : dict, optional
        track id -> genre ids of every track (target genres_all): kept in each shard's spec.

    Returns
    -------
    list of ShardSpec
        In split order (train, validation, test), then shard index. Empty
        splits get no shards.
    """
    if int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    unknown = set(tracks) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; expected {SPLITS}")
    seen: set[int] = set()
    specs: list[ShardSpec] = []
    for split in SPLITS:
        items = sorted((int(t), int(label)) for t, label in tracks.get(split, []))
        ids = [t for t, _ in items]
        if len(set(ids)) != len(ids) or seen.intersection(ids):
            raise ValueError(f"track ids must be unique across splits (split {split!r})")
        seen.update(ids)
        n = len(items)
        if n == 0:
            continue
        num_shards = -(-n // int(shard_size))
        for k in range(num_shards):
            part = items[k * n // num_shards : (k + 1) * n // num_shards]
            specs.append(
                ShardSpec(
                    name=shard_name(split, k, num_shards),
                    split=split,
                    shard_index=k,
                    num_shards=num_shards,
                    track_ids=tuple(t for t, _ in part),
                    labels=tuple(label for _, label in part),
                    genres=None if genres is None else tuple(tuple(genres[t]) for t, _ in part),
                )
            )
    return specs


def select_for_task(specs: list[ShardSpec], task_index: int, num_tasks: int) -> list[ShardSpec]:
    """The shards an array task computes: positions k with ``k % num_tasks == task_index``."""
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"need 0 <= shard index < num shards, got {task_index}, {num_tasks}")
    return [spec for k, spec in enumerate(specs) if k % num_tasks == task_index]
