"""Training runs on generated shards: the loss falls, resume equals uninterrupted, logs are written."""

from __future__ import annotations

import struct
import subprocess

import pytest
import torch
import yaml

from tests._shardset import fit_argv, make_shard_set
from train.__main__ import main
from train.checkpoint import CheckpointError, load_checkpoint
from train.config import TrainConfig, config_from_dict
from train.loop import learning_rate
from train.tasks import class_weight_tensor

COUNTS = {"train": [64, 32], "validation": [32], "test": [32]}


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shardset")
    make_shard_set(folder, COUNTS, num_classes=4, seed=2)
    return folder


def _fit(shards_dir, run, *extra):
    assert main(fit_argv(shards_dir, run, *extra)) == 0


@pytest.mark.slow
def test_short_run_lowers_the_loss_and_learns(shard_set, tmp_path):
    _fit(shard_set, tmp_path / "run", "--epochs", "3")
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.8  # 4 classes: chance is 0.25
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["best_metric"] == max(h["val_macro_f1"] for h in history)
    assert best["class_names"] == ["genre00", "genre01", "genre02", "genre03"]
    assert best["normalization"]["mean"].shape == (128,)


@pytest.mark.slow
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(shard_set, tmp_path):
    _fit(shard_set, tmp_path / "straight", "--epochs", "2", "--max-steps-per-epoch", "3")
    _fit(shard_set, tmp_path / "resumed", "--epochs", "1", "--max-steps-per-epoch", "3")
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1
    assert main(["fit", "--run", str(tmp_path / "resumed"), "--resume", "--epochs", "2"]) == 0
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["epoch"] == 2
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    saved = yaml.safe_load((tmp_path / "resumed" / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["max_steps_per_epoch"] == 3


def test_preload_ram_trains_exactly_like_the_memory_map(shard_set, tmp_path):
    _fit(shard_set, tmp_path / "mapped", "--epochs", "1", "--max-steps-per-epoch", "2")
    _fit(shard_set, tmp_path / "ram", "--epochs", "1", "--max-steps-per-epoch", "2", "--preload", "ram")
    a = load_checkpoint(tmp_path / "mapped" / "last.pt")["state_dict"]
    b = load_checkpoint(tmp_path / "ram" / "last.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _event_tags(folder) -> set[str]:
    from tensorboardX.proto import event_pb2

    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            tags.update(v.tag for v in event.summary.value)
            pos += 12 + length + 4
    return tags


def test_tensorboard_events_and_config_are_written(shard_set, tmp_path):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text("epochs: 1\nlr: 0.02\noptimizer: adamw\nclass_weights: balanced\n")
    run = tmp_path / "run"
    _fit(shard_set, run, "--config", str(config_file), "--lr", "0.005", "--max-steps-per-epoch", "2")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lr"] == 0.005 and saved["optimizer"] == "adamw" and saved["epochs"] == 1
    assert saved["class_weights"] == "balanced"
    assert load_checkpoint(run / "last.pt")["config"] == saved
    tags = _event_tags(run / "tensorboard")
    assert {
        "loss/train",
        "loss/validation",
        "accuracy/train",
        "accuracy/validation",
        "lr",
        "macro_f1/validation",
        "confusion/validation",
    } <= tags


def test_an_existing_run_is_not_overwritten_without_resume(shard_set, tmp_path, capsys):
    _fit(shard_set, tmp_path / "run", "--epochs", "1", "--max-steps-per-epoch", "1")
    before = (tmp_path / "run" / "last.pt").read_bytes()
    assert main(["fit", "--shards", str(shard_set), "--run", str(tmp_path / "run")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_truncated_checkpoint_is_a_clear_error(shard_set, tmp_path, capsys):
    _fit(shard_set, tmp_path / "run", "--epochs", "1", "--max-steps-per-epoch", "1")
    best = tmp_path / "run" / "best.pt"
    best.write_bytes(best.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"best\.pt.*truncated or corrupt"):
        load_checkpoint(best)
    assert main(["test", "--shards", str(shard_set), "--run", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "best.pt" in capsys.readouterr().err


def test_learning_rate_schedule_warms_up_then_steps_down():
    config = TrainConfig(lr=0.1, warmup_epochs=1, milestones=[3, 5], gamma=0.1, epochs=6)
    assert learning_rate(config, 0, 0, 10) == pytest.approx(0.01)
    assert learning_rate(config, 0, 9, 10) == pytest.approx(0.1)
    assert learning_rate(config, 2, 5, 10) == pytest.approx(0.1)
    assert learning_rate(config, 3, 0, 10) == pytest.approx(0.01)
    assert learning_rate(config, 5, 0, 10) == pytest.approx(0.001)
    assert TrainConfig(epochs=20).resolved_milestones() == [10, 15]


def test_balanced_class_weights():
    weights = class_weight_tensor([10, 30, 0, 20], "balanced")
    assert weights.tolist() == pytest.approx([2.0, 2 / 3, 0.0, 1.0])
    assert class_weight_tensor([1, 2], "none") is None


def test_bad_settings_are_clear_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown settings.*'lrate'"):
        config_from_dict({"lrate": 0.1})
    with pytest.raises(ValueError, match="optimizer='adam'"):
        config_from_dict({"optimizer": "adam"})
    assert main(["fit", "--shards", str(tmp_path), "--run", str(tmp_path / "r"), "--epochs", "1"]) == 2
    assert "manifest.json: no manifest" in capsys.readouterr().err


def test_cli_help(python, subprocess_env, repo_root):
    out = subprocess.run(
        [python, "-m", "train", "fit", "--help"],
        cwd=repo_root,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for flag in ("--resume", "--preload", "--optimizer", "--class-weights", "--select-metric"):
        assert flag in out.stdout


@pytest.mark.parametrize("flag", [None, "--quiet", "--verbose"])
def test_logging_options_of_fit_and_test(shard_set, tmp_path, capsys, flag):
    """Progress on stderr (through logging, hidden by --quiet), results on stdout whatever the level."""
    run = tmp_path / "run"
    flags = [flag] if flag else []
    _fit(shard_set, run, "--epochs", "1", "--max-steps-per-epoch", "2", *flags)
    out, err = capsys.readouterr()
    assert out.startswith(f"checkpoints: {run / 'best.pt'}")
    assert main(["test", "--shards", str(shard_set), "--run", str(run), "--device", "cpu", *flags]) == 0
    test_out, test_err = capsys.readouterr()
    assert "macro_f1" in test_out and f"report: {run / 'test_report.json'}" in test_out
    if flag == "--quiet":
        assert err == "" and test_err == ""  # no progress lines, no progress bars
    elif flag == "--verbose":
        assert "info train.loop: train: 96 samples, validation: 32, 4 classes" in err
        assert "info train.loop: epoch 1/1: train loss" in err
    else:
        assert "\ntrain: 96 samples, validation: 32, 4 classes" in "\n" + err
        assert "epoch 1/1: train loss" in err and "train.loop" not in err


def test_a_plain_value_error_inside_a_command_is_a_bug_with_its_traceback(shard_set, tmp_path, monkeypatch):
    """Only FmaGenreError is reported in one line; `python -m train` no longer hides a ValueError."""
    import train.loop

    def broken_fit(config, resume=False):
        raise ValueError("a programming error")

    monkeypatch.setattr(train.loop, "fit", broken_fit)
    with pytest.raises(ValueError, match="a programming error"):
        main(["fit", "--shards", str(shard_set), "--run", str(tmp_path / "run")])
