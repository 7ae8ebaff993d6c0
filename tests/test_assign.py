"""Shard assignment: deterministic, near-equal shards, array-task selection."""

from __future__ import annotations

import pytest

from preprocess.assign import assign_shards, select_for_task
from shards import parse_shard_name


def _tracks(n_train, n_val, n_test):
    ids = iter(range(1000, 1000 + 7 * (n_train + n_val + n_test) + 1, 7))
    return {
        "train": [(next(ids), i % 16) for i in range(n_train)],
        "validation": [(next(ids), i % 16) for i in range(n_val)],
        "test": [(next(ids), i % 16) for i in range(n_test)],
    }


def test_shards_cover_every_track_once_in_near_equal_sorted_parts():
    tracks = _tracks(1001, 250, 0)
    specs = assign_shards(tracks, shard_size=256)
    by_split = {}
    for s in specs:
        by_split.setdefault(s.split, []).append(s)
        assert parse_shard_name(s.name) == (s.split, s.shard_index, s.num_shards)
        assert list(s.track_ids) == sorted(s.track_ids)
    assert [len(s.track_ids) for s in by_split["train"]] == [250, 250, 250, 251]
    assert [len(s.track_ids) for s in by_split["validation"]] == [250]
    assert "test" not in by_split  # an empty split gets no shard
    for split, items in tracks.items():
        got = [
            (t, lab) for s in by_split.get(split, []) for t, lab in zip(s.track_ids, s.labels, strict=True)
        ]
        assert got == sorted(items)


def test_assignment_depends_only_on_the_tracks_not_their_order():
    tracks = _tracks(600, 70, 70)
    shuffled = {k: list(reversed(v)) for k, v in tracks.items()}
    assert assign_shards(tracks, 100) == assign_shards(shuffled, 100)
    assert [s.to_dict() for s in assign_shards(tracks, 100)] == [
        s.to_dict() for s in assign_shards(tracks, 100)
    ]
    assert assign_shards(tracks, 100)[0].name == "train-00000-of-00006.h5"


def test_array_tasks_partition_the_shards():
    specs = assign_shards(_tracks(900, 120, 130), 50)
    parts = [select_for_task(specs, i, 4) for i in range(4)]
    names = [s.name for part in parts for s in part]
    assert sorted(names) == sorted(s.name for s in specs) and len(set(names)) == len(names)
    assert [s.name for s in parts[1]] == [specs[k].name for k in range(1, len(specs), 4)]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="shard_size"):
        assign_shards(_tracks(3, 0, 0), 0)
    with pytest.raises(ValueError, match="unique"):
        assign_shards({"train": [(1, 0)], "test": [(1, 0)]}, 10)
    with pytest.raises(ValueError, match="unknown splits"):
        assign_shards({"training": [(1, 0)]}, 10)
    with pytest.raises(ValueError, match="shard index"):
        select_for_task([], 3, 3)
