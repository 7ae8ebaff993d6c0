"""Data-parallel training: the rank partition of each global batch (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from train.distributed import World, world_from_env
from train.sampling import (
    EpochBatchSampler,
    RankBatchSampler,
    batch_indices,
    epoch_order,
    rank_part,
    rank_range,
)

# -- the partition of each global batch (pure) ----------------------------------------------------

@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_share_every_global_batch_whatever_the_world_size(world_size):
    """Rank parts are disjoint, equal in size, and together are the 1-process batch (trimmed)."""
    base = EpochBatchSampler(50, 12, shuffle=True, seed=7, drop_last=False)
    base.set_epoch(3)
    one_process = list(base)
    ranks = [RankBatchSampler(EpochBatchSampler(50, 12, shuffle=True, seed=7), r, world_size)
             for r in range(world_size)]
    for sampler in ranks:
        sampler.set_epoch(3)
    per_rank = [list(sampler) for sampler in ranks]
    assert all(len(batches) == len(one_process) for batches in per_rank)
    for step, batch in enumerate(one_process):
        parts = [batches[step] for batches in per_rank]
        assert len({len(p) for p in parts}) == 1, "ranks must hold equal parts"
        joined = np.concatenate(parts)
        keep = len(batch) - len(batch) % world_size
        assert np.array_equal(joined, batch[:keep]), f"step {step}"


def test_rank_part_trims_only_a_remainder_and_rejects_bad_ranks():
    batch = np.arange(10, 17)  # 7 samples over 3 ranks: 2 each, the last one left out
    assert [rank_part(batch, r, 3).tolist() for r in range(3)] == [[10, 11], [12, 13], [14, 15]]
    with pytest.raises(ValueError, match="rank"):
        rank_part(batch, 3, 3)
    with pytest.raises(ValueError, match="--batch-size"):
        RankBatchSampler(EpochBatchSampler(10, 2, shuffle=False), 0, 4)


def test_epochs_differ_and_each_epoch_covers_the_split_once_per_rank_set():
    parts = [np.concatenate([rank_part(b, r, 2) for b in batch_indices(epoch_order(64, 1, e), 16)
                             for r in range(2)]) for e in (0, 1)]
    assert sorted(parts[0].tolist()) == list(range(64)) == sorted(parts[1].tolist())
    assert not np.array_equal(parts[0], parts[1])


@pytest.mark.parametrize(("n", "world_size"), [(41, 2), (5, 3), (2, 4), (0, 2)])
def test_validation_ranges_cover_the_split_in_order(n, world_size):
    ranges = [rank_range(n, r, world_size) for r in range(world_size)]
    joined = np.concatenate([np.arange(*r) for r in ranges])
    assert joined.tolist() == list(range(n))
    assert max(b - a for a, b in ranges) - min(b - a for a, b in ranges) <= 1


def test_world_from_torchrun_environment():
    assert world_from_env({}) == World(0, 1, 0)
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    world = world_from_env(env)
    assert (world.rank, world.size, world.local_rank, world.main, world.distributed) == (3, 4, 1, False, True)
    with pytest.raises(ValueError, match="torchrun"):
        world_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not in"):
        world_from_env({**env, "RANK": "4"})
