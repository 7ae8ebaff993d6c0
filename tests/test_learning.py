"""The learning options through ``train fit`` / ``train test``: each one changes training, EMA weights
are what ``test`` scores with, and a resumed run with every option on equals an uninterrupted one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests._shardset import fit_argv, make_shard_set
from train.__main__ import main
from train.checkpoint import load_checkpoint
from train.config import TrainConfig, config_from_dict

COUNTS = {"train": [48, 24], "validation": [24], "test": [24]}
ALL_ON = [
    "--sampling",
    "balanced",
    "--label-smoothing",
    "0.1",
    "--ema-decay",
    "0.9",
    "--freq-masks",
    "2",
    "--time-masks",
    "2",
    "--time-shift",
    "0.5",
    "--mixup-alpha",
    "0.4",
]


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shardset")
    make_shard_set(folder, COUNTS, num_classes=4, seed=5)
    return folder


@pytest.fixture(scope="module")
def plain(shard_set, tmp_path_factory):
    """One epoch with every learning option off."""
    return _fit(shard_set, tmp_path_factory.mktemp("plain"), "--epochs", "1")


def _fit(shards_dir, run, *extra):
    assert main(fit_argv(shards_dir, run, "--max-steps-per-epoch", "3", *extra, batch_size=8)) == 0
    return load_checkpoint(run / "last.pt")


@pytest.mark.parametrize(
    "option",
    [
        ["--sampling", "balanced"],
        ["--label-smoothing", "0.2"],
        ["--freq-masks", "2"],
        ["--time-masks", "2"],
        ["--time-shift", "0.5"],
        ["--mixup-alpha", "0.4"],
    ],
)
def test_each_option_changes_the_trained_weights(shard_set, plain, tmp_path, option):
    changed = _fit(shard_set, tmp_path / "changed", "--epochs", "1", *option)
    key = "classifier.4.weight"
    assert not torch.equal(plain["state_dict"][key], changed["state_dict"][key])


def test_ema_weights_are_saved_and_are_what_test_scores_with(shard_set, tmp_path):
    from train.dataset import ShardDataset
    from train.evaluate import load_model

    run = tmp_path / "ema"
    _fit(shard_set, run, "--epochs", "2", "--ema-decay", "0.9")
    best = load_checkpoint(run / "best.pt")
    ema = best["ema_state_dict"]["weights"]
    assert not torch.equal(ema["classifier.4.weight"], best["state_dict"]["classifier.4.weight"])
    assert main(["test", "--shards", str(shard_set), "--run", str(run), "--device", "cpu"]) == 0
    report = json.loads((run / "test_report.json").read_text())
    model = load_model(best, torch.device("cpu"))
    assert torch.equal(model.state_dict()["classifier.4.weight"], ema["classifier.4.weight"])
    # scoring the test split with the raw weights gives other probabilities than the report's model
    data = ShardDataset(shard_set, "test")
    x, _ = data.gather(np.arange(len(data)))
    norm = best["normalization"]
    x = (x - norm["mean"].view(1, 1, 128, 1)) / norm["std"].view(1, 1, 128, 1)
    with torch.no_grad():
        ema_scores = model(x).softmax(1)
        raw = load_model({**best, "ema_state_dict": None}, torch.device("cpu"))
        raw_scores = raw(x).softmax(1)
    assert not torch.allclose(ema_scores, raw_scores)
    counts = np.asarray(report["confusion_matrix"]).sum(axis=0)
    assert counts.tolist() == np.bincount(ema_scores.argmax(1).numpy(), minlength=4).tolist()


def test_resume_with_every_option_equals_an_uninterrupted_run(shard_set, tmp_path):
    straight = _fit(shard_set, tmp_path / "straight", "--epochs", "2", *ALL_ON)
    _fit(shard_set, tmp_path / "resumed", "--epochs", "1", *ALL_ON)
    assert main(["fit", "--run", str(tmp_path / "resumed"), "--resume", "--epochs", "2"]) == 0
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    for key, value in straight["ema_state_dict"]["weights"].items():
        assert torch.equal(value, resumed["ema_state_dict"]["weights"][key]), key


@pytest.mark.parametrize(
    "bad",
    [
        {"label_smoothing": 1.0},
        {"ema_decay": 1.0},
        {"time_shift": 2.0},
        {"freq_masks": -1},
        {"sampling": "oversample"},
    ],
)
def test_bad_learning_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        config_from_dict(bad, TrainConfig())
