"""train.sampling.balanced_order: class counts balanced, seeded, every sample reached."""

import numpy as np
import pytest

from train.sampling import EpochBatchSampler, balanced_order, epoch_order


def _imbalanced(seed=0):
    # FMA-like imbalance: 600, 250, 100, 40, 10 samples; labels shuffled
    labels = np.repeat(np.arange(5), [600, 250, 100, 40, 10])
    return np.random.default_rng(seed).permutation(labels)


def test_class_counts_are_balanced():
    labels = _imbalanced()
    order = balanced_order(labels, seed=0, epoch=0)
    assert len(order) == len(labels)
    counts = np.bincount(labels[order], minlength=5)
    assert counts.max() - counts.min() <= 1  # 200 each: 1000 / 5
    plain = np.bincount(labels[epoch_order(len(labels), 0, 0)], minlength=5)
    assert plain.max() - plain.min() == 590  # the permutation keeps the imbalance


def test_small_classes_repeat_only_after_all_their_samples():
    labels = _imbalanced()
    order = balanced_order(labels, seed=3, epoch=0)
    tiny = order[labels[order] == 4]  # 200 draws from 10 samples
    assert len(tiny) == 200 and set(tiny) == set(np.flatnonzero(labels == 4))
    assert np.all(np.bincount(tiny)[np.flatnonzero(labels == 4)] == 20)


def test_large_classes_are_covered_over_epochs_without_repeats_inside_one():
    labels = _imbalanced()
    big = np.flatnonzero(labels == 0)
    seen = []
    for epoch in range(3):  # 3 x 200 draws = the 600 samples once
        order = balanced_order(labels, seed=1, epoch=epoch)
        seen.append(order[labels[order] == 0])
    assert all(len(set(s)) == len(s) for s in seen)
    assert sorted(np.concatenate(seen)) == sorted(big)


def test_pure_function_of_seed_and_epoch():
    labels = _imbalanced()
    a = balanced_order(labels, 0, 2)
    assert np.array_equal(a, balanced_order(labels, 0, 2))
    assert not np.array_equal(a, balanced_order(labels, 0, 3))
    assert not np.array_equal(a, balanced_order(labels, 1, 2))


def test_sampler_uses_balanced_order_with_labels():
    labels = _imbalanced()
    sampler = EpochBatchSampler(len(labels), 64, shuffle=True, seed=0, balance_labels=labels)
    sampler.set_epoch(1)
    drawn = np.concatenate(list(sampler))
    assert len(sampler) == len(list(sampler))
    counts = np.bincount(labels[drawn], minlength=5)
    assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="balance_labels"):
        EpochBatchSampler(10, 4, shuffle=True, balance_labels=labels)


def test_absent_classes_and_empty_input():
    labels = np.array([0, 0, 0, 7, 7, 7, 7, 7, 7, 7])
    counts = np.bincount(labels[balanced_order(labels, 0, 0)])
    assert counts[0] == 5 and counts[7] == 5
    assert len(balanced_order(np.zeros(0, np.int64), 0, 0)) == 0
