"""bench/crossval.py: the grouped, class-stratified folds and the fold shard sets."""

from __future__ import annotations

import numpy as np
import pytest

from bench.crossval import assign_folds, fold_splits, read_base, summarize, write_fold
from tests._shardset import make_shard_set
from train.dataset import ShardDataset


def _clips(seed: int = 0):
    """Classes with 5 to 40 groups of 1 to 10 clips each, like the real-music check."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for c in range(6):
        for g in range(int(rng.integers(5, 41))):
            n = int(rng.integers(1, 11))
            labels += [c] * n
            groups += [(c, f"piece{g}")] * n
    return np.array(labels), groups


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_groups_never_cross_folds_and_every_class_is_in_every_training_part(seed):
    labels, groups = _clips(seed)
    fold = assign_folds(labels, groups, k=5, seed=seed)
    folds_of = {}
    for g, f in zip(groups, fold.tolist(), strict=True):
        folds_of.setdefault(g, set()).add(f)
    assert all(len(f) == 1 for f in folds_of.values())
    for f in range(5):
        splits = fold_splits(fold, f, 5)
        assert set(np.unique(splits)) == {"train", "validation", "test"}
        for split in ("train", "validation", "test"):
            assert set(labels[splits == split]) == set(range(6)), (f, split)
    # The folds of a class hold similar numbers of its clips (largest groups placed first).
    for c in range(6):
        counts = np.bincount(fold[labels == c], minlength=5)
        assert counts.max() - counts.min() <= max(10, counts.mean())


def test_folds_are_a_pure_function_of_the_clips_and_the_seed():
    labels, groups = _clips(3)
    a = assign_folds(labels, groups, 5, seed=7)
    assert np.array_equal(a, assign_folds(labels, groups, 5, seed=7))
    assert not np.array_equal(a, assign_folds(labels, groups, 5, seed=8))


def test_impossible_folds_are_refused():
    with pytest.raises(ValueError, match="class 1 has 3 groups"):
        assign_folds(np.array([0] * 5 + [1] * 3), [f"a{i}" for i in range(5)] + ["b0", "b1", "b2"], 5)
    with pytest.raises(ValueError, match="holds clips of classes"):
        assign_folds(np.array([0, 1]), ["same", "same"], 2)


def test_fold_shard_sets_hold_the_same_images_resplit(tmp_path):
    base_dir = tmp_path / "base"
    written = make_shard_set(base_dir, {"train": [12, 12], "validation": [10], "test": [10]}, fine=True)
    base = read_base(base_dir)
    assert len(base["track_id"]) == 44 and "mel_fine" in base
    splits = np.array(["train", "validation", "test", "train"] * 11)
    out = write_fold(base, splits, tmp_path / "fold", shard_size=8)
    for split in ("train", "validation", "test"):
        ds = ShardDataset(out, split, image="mel_fine")
        rows = np.flatnonzero(splits == split)
        assert ds.track_ids.tolist() == base["track_id"][rows].tolist()
        x, y = ds.gather(np.arange(len(ds)))
        np.testing.assert_array_equal(x[:, 0].numpy(), base["mel_fine"][rows].astype(np.float32))
        assert y.tolist() == base["label"][rows].tolist()
    assert ShardDataset(out, "test").recipe == written["manifest"]["recipe"]


def test_summary_pairs_each_fold_with_the_probe():
    probe = {f: {"test_macro_f1": 0.3, "test_accuracy": 0.4, "test_balanced_accuracy": 0.3} for f in range(2)}
    run = {"test_accuracy": 0.5, "test_balanced_accuracy": 0.5, "validation_macro_f1": 0.5}
    runs = {
        "r": {
            (0, 0): {**run, "test_macro_f1": 0.6},
            (0, 1): {**run, "test_macro_f1": 0.4},
            (1, 0): {**run, "test_macro_f1": 0.25},
            (1, 1): {**run, "test_macro_f1": 0.25},
        }
    }
    for r in runs["r"].values():
        r.update(validation_accuracy=0.5, validation_balanced_accuracy=0.5)
    summary = summarize(runs, probe, 2)
    assert summary["r"]["per_fold_macro_f1"] == [0.5, 0.25]
    assert summary["r"]["folds_above_probe"] == 1
    assert summary["r"]["ratio_to_probe"] == pytest.approx(0.375 / 0.3, abs=1e-3)
