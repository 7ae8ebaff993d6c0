"""bench/probe.py: the logistic-regression baseline on per-band mean and std."""

import numpy as np
import pytest

from bench.probe import band_features, fit_probe, run
from tests._shardset import make_shard_set


def test_band_features_are_per_band_mean_then_std():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 128, 128))
    f = band_features(images[:, None])
    assert f.shape == (3, 256)
    assert np.allclose(f[:, :128], images.mean(axis=2)) and np.allclose(f[:, 128:], images.std(axis=2))


@pytest.mark.slow
def test_probe_learns_band_patterns_and_chooses_c_on_validation(tmp_path):
    make_shard_set(
        tmp_path / "s", {"train": [120, 80], "validation": [60], "test": [60]}, num_classes=4, label_noise=0.1
    )
    report = run(str(tmp_path / "s"))
    assert report["n_test"] == 60 and report["n_train"] == 200
    assert report["test_accuracy"] > 0.7  # band energy is what the probe sees
    assert report["C"] in [float(c) for c in report["validation_macro_f1_by_C"]]
    best = max(report["validation_macro_f1_by_C"].values())
    assert report["validation_macro_f1_by_C"][str(report["C"])] == best
    # 10 % of the stored labels are random: being right on all of them would mean seeing the test labels
    assert report["test_accuracy"] < 0.99


def test_probe_refuses_an_empty_validation_split():
    x = np.random.default_rng(0).normal(size=(20, 256))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match="validation split is empty"):
        fit_probe((x, y), (np.zeros((0, 256)), np.zeros(0, np.int64)), 2)
