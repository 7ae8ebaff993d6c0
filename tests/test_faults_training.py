"""Faults during training: kill -9 in the middle of an epoch, then --resume; a truncated checkpoint.

tests/test_training.py holds the in-process resume (stop after an epoch, continue) and a
truncated best.pt through `python -m train test`; here the run is a real process killed
with SIGKILL mid-epoch, and the truncated checkpoint is last.pt on the --resume path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import torch

from tests._faults import kill_group, start
from tests._shardset import fit_argv, make_shard_set
from train.__main__ import main
from train.checkpoint import load_checkpoint

COUNTS = {"train": [48, 48], "validation": [16], "test": [16]}
EPOCHS = 4


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shardset")
    make_shard_set(folder, COUNTS, num_classes=4, seed=4)
    return folder


def fit_cmd(python, shards_dir, run) -> list[str]:
    extra = ("--epochs", str(EPOCHS), "--num-workers", "0")
    return [python, "-m", "train", *fit_argv(shards_dir, run, *extra, batch_size=8, seed=11)]


@pytest.fixture(scope="module")
def straight(shard_set, tmp_path_factory, python, subprocess_env):
    """An uninterrupted run, in its own process like the killed one."""
    run = tmp_path_factory.mktemp("straight") / "run"
    done = subprocess.run(
        fit_cmd(python, shard_set, run), env=subprocess_env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return run


class OutputReader(threading.Thread):
    """Collects a pipe's bytes as they come (tqdm writes its bar with carriage returns, not lines)."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.data = pipe, b""

    def run(self) -> None:
        while chunk := os.read(self.pipe.fileno(), 65536):
            self.data += chunk


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(
    straight, shard_set, tmp_path, python, subprocess_env
):
    run = tmp_path / "run"
    proc = start(
        fit_cmd(python, shard_set, run), subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    reader = OutputReader(proc.stderr)
    reader.start()

    def in_epoch_2() -> bool:
        # The bar of epoch 2 showing a loss: its first optimiser step is done (the bar is
        # refreshed with the running loss after steps 0, 10, 20, ...), 11 more steps to go.
        return any(
            part.startswith(f"epoch 2/{EPOCHS}".encode()) and b"loss=" in part
            for part in reader.data.split(b"\r")
        )

    try:
        deadline = time.monotonic() + 300
        while not in_epoch_2():
            assert proc.poll() is None and time.monotonic() < deadline, reader.data.decode()[-2000:]
            time.sleep(0.002)
        alive = proc.poll() is None
    finally:
        kill_group(proc)
        reader.join(timeout=10)
    assert alive and proc.returncode == -9
    tail = reader.data.decode().split("\r")[-1]
    assert tail.startswith(f"epoch 2/{EPOCHS}"), tail  # killed with epoch 2's bar up
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 1 was kept, epoch 2 is lost
    print(f"killed at: {tail!r}")

    resumed = subprocess.run(
        [python, "-m", "train", "fit", "--run", str(run), "--resume"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, theirs = load_checkpoint(run / "last.pt"), load_checkpoint(straight / "last.pt")
    assert ours["epoch"] == theirs["epoch"] == EPOCHS and len(ours["history"]) == EPOCHS
    assert ours["state_dict"].keys() == theirs["state_dict"].keys()
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key
    for a, b in zip(ours["history"], theirs["history"], strict=True):
        assert (a["train_loss"], a["val_loss"], a["lr"]) == (b["train_loss"], b["val_loss"], b["lr"])
    assert load_checkpoint(run / "best.pt")["epoch"] == load_checkpoint(straight / "best.pt")["epoch"]


@pytest.mark.parametrize("cut", [0, 100, 0.5], ids=["empty", "100_bytes", "half"])
def test_truncated_last_checkpoint_is_named_on_resume(cut, straight, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    last = run / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    best_before = (run / "best.pt").read_bytes()
    assert main(["fit", "--run", str(run), "--resume", "--epochs", str(EPOCHS + 1)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(last) in err and "truncated or corrupt" in err, err
    assert "best.pt" in err  # says what to do: the other checkpoint
    assert (run / "best.pt").read_bytes() == best_before  # nothing else touched


@pytest.mark.slow
def test_ctrl_c_mid_epoch_exits_130_saying_how_to_resume(shard_set, tmp_path, python, subprocess_env):
    """SIGINT to the command's process group (what Ctrl-C in a terminal does) in epoch 2."""
    run = tmp_path / "run"
    proc = start(
        fit_cmd(python, shard_set, run), subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    reader = OutputReader(proc.stderr)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not any(
            part.startswith(f"epoch 2/{EPOCHS}".encode()) and b"loss=" in part
            for part in reader.data.split(b"\r")
        ):
            assert proc.poll() is None and time.monotonic() < deadline, reader.data.decode()[-2000:]
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        kill_group(proc)
        reader.join(timeout=10)
    err = reader.data.decode()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"interrupted in epoch 2/{EPOCHS}" in err and "--resume" in err, err[-2000:]
    assert err.rstrip().endswith("interrupted")
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # epoch 1 kept, loadable
