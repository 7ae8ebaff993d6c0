"""bench/probe.py: the logistic-regression baseline on per-band mean and std."""

import numpy as np
import pytest

from bench.probe import band_features, fit_probe, run, run_multilabel
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


@pytest.mark.slow
def test_multilabel_probe_and_frequency_baseline(tmp_path):
    """One-vs-rest on per-band features beats scoring every genre by its training frequency on the
    band-per-genre set, and both are scored on the CNN's genres, as train test scores them."""
    from sklearn.metrics import average_precision_score

    made = make_shard_set(
        tmp_path / "s", {"train": [100, 60], "validation": [50], "test": [60]}, num_classes=4, multilabel=True
    )
    report = run_multilabel(str(tmp_path / "s"), min_genre_tracks=5)
    train_genres, test_genres = made["data"]["train"][3], made["data"]["test"][3]
    kept = np.flatnonzero(train_genres.sum(axis=0) >= 5)
    assert report["genres"] == len(kept) and report["n_test"] == 60
    y = test_genres[:, kept]
    scored = y.sum(axis=0) > 0
    freq = np.tile(train_genres[:, kept].mean(axis=0), (60, 1))
    assert report["frequency_baseline"]["macro_map"] == pytest.approx(
        average_precision_score(y[:, scored], freq[:, scored], average="macro")
    )
    assert report["frequency_baseline"]["macro_auc"] == pytest.approx(0.5)
    assert report["probe"]["macro_map"] > report["frequency_baseline"]["macro_map"] + 0.3
    best = max(report["validation_macro_map_by_C"].values())
    assert report["validation_macro_map_by_C"][str(report["C"])] == best
