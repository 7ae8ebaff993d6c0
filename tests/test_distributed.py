"""Data-parallel training: the rank partition (pure), and real `torchrun` jobs on CPU with gloo.

The equality test trains the same seeded run in 1 process (global batch B) and in 2 torchrun
processes (B/2 each) and compares the weights. The model uses GroupNorm: torch's SyncBatchNorm
refuses CPU tensors, so with BatchNorm each CPU rank normalises with its own half-batch's statistics
and the runs legitimately differ (measured by bench/ddp_equality.py, stated in docs/training.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.errors import FmaGenreError
from tests._shardset import fit_argv, make_shard_set
from tests._slurm_cluster import free_ports
from train.checkpoint import load_checkpoint
from train.distributed import World, world_from_env
from train.models import ModelConfig, build_model
from train.sampling import (
    EpochBatchSampler,
    RankBatchSampler,
    batch_indices,
    epoch_order,
    rank_part,
    rank_range,
)

COUNTS = {"train": [40, 40], "validation": [21, 20], "test": [16]}
# Equal weights "within float tolerance": the 2-rank run sums each gradient in two halves and
# averages them (DDP's all-reduce) where one process sums the whole batch at once; float32 rounds
# the two orders differently (~1e-7 relative per operation) and SGD carries that through the steps.
ATOL, RTOL = 1e-5, 1e-4


# -- the partition of each global batch (pure) ----------------------------------------------------


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_share_every_global_batch_whatever_the_world_size(world_size):
    """Rank parts are disjoint, equal in size, and together are the 1-process batch (trimmed)."""
    base = EpochBatchSampler(50, 12, shuffle=True, seed=7, drop_last=False)
    base.set_epoch(3)
    one_process = list(base)
    ranks = [
        RankBatchSampler(EpochBatchSampler(50, 12, shuffle=True, seed=7), r, world_size)
        for r in range(world_size)
    ]
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
    parts = [
        np.concatenate(
            [rank_part(b, r, 2) for b in batch_indices(epoch_order(64, 1, e), 16) for r in range(2)]
        )
        for e in (0, 1)
    ]
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
    with pytest.raises(FmaGenreError, match="torchrun"):
        world_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(FmaGenreError, match="not in"):
        world_from_env({**env, "RANK": "4"})


# -- real torchrun jobs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp-shards")
    make_shard_set(folder, COUNTS, num_classes=4, seed=5)
    return folder


def ddp_fit_argv(shards: Path, run: Path, *extra: str) -> list[str]:
    return fit_argv(shards, run, "--no-verify-shards", *extra, seed=4)


def torchrun(python: str, nproc: int, argv: list[str], *options: str) -> list[str]:
    """``torchrun [options] -m -- train ARGV`` on one node, 127.0.0.1 and a free port.

    The ``--`` keeps torchrun's own parser off the training flags (it would take ``--run`` for
    an abbreviation of its ``--run-path`` and stop).
    """
    (port,) = free_ports(1)
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        *options,
        "-m",
        "--",
        "train",
        *argv,
    ]


def run(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    # One thread per process: the runs compare summation orders, not thread schedules.
    done = subprocess.run(
        cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    return done


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_ranks_train_the_weights_of_one_process(shard_set, tmp_path, python, subprocess_env):
    """2 ranks x batch 8 = 1 process x batch 16 (same seed), weights and their EMA; resume under torchrun is
    exact; rank 0 alone writes."""
    common = ("--norm", "group", "--max-steps-per-epoch", "3", "--ema-decay", "0.5")
    run(
        [python, "-m", "train", *ddp_fit_argv(shard_set, tmp_path / "one", "--epochs", "2", *common)],
        subprocess_env,
    )
    two = run(
        torchrun(python, 2, ddp_fit_argv(shard_set, tmp_path / "two", "--epochs", "2", *common)),
        subprocess_env,
    )
    run(
        torchrun(python, 2, ddp_fit_argv(shard_set, tmp_path / "resumed", "--epochs", "1", *common)),
        subprocess_env,
    )
    run(
        torchrun(python, 2, ["fit", "--run", str(tmp_path / "resumed"), "--resume", "--epochs", "2"]),
        subprocess_env,
    )

    one_ckpt, two_ckpt = (load_checkpoint(tmp_path / name / "last.pt") for name in ("one", "two"))
    a, b = one_ckpt["state_dict"], two_ckpt["state_dict"]
    print(f"max |w_1proc - w_2ranks| after 6 steps: {max_difference(a, b):.3g}")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=ATOL, rtol=RTOL, msg=key)
    # The weights moved far more than the tolerance, so the comparison can fail.
    torch.manual_seed(4)
    initial = build_model(ModelConfig("seed", 4, {"norm": "group"})).state_dict()
    assert max_difference(a, initial) > 1000 * ATOL
    for key in ("train_samples", "epoch"):
        assert [h[key] for h in one_ckpt["history"]] == [h[key] for h in two_ckpt["history"]]
    # Validation is split across the ranks and gathered: the same metrics over the whole split.
    for h1, h2 in zip(one_ckpt["history"], two_ckpt["history"], strict=True):
        assert h1["train_samples"] == 3 * 16
        for key in ("val_loss", "val_accuracy", "val_macro_f1", "train_loss", "train_accuracy"):
            assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-5), key
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["epoch"] == 2
    for key, value in b.items():
        assert torch.equal(value, resumed["state_dict"][key]), f"resumed under torchrun: {key} differs"
    # The weight average follows the same weights: same keys, same values, resumed exactly.
    ema_one, ema_two = one_ckpt["ema_state_dict"]["weights"], two_ckpt["ema_state_dict"]["weights"]
    assert ema_two.keys() == b.keys()
    for key in ema_one:
        torch.testing.assert_close(ema_two[key], ema_one[key], atol=ATOL, rtol=RTOL, msg=key)
        assert torch.equal(resumed["ema_state_dict"]["weights"][key], ema_two[key]), key
    # Rank 0 alone writes: one TensorBoard event file, one line per epoch on stdout.
    assert len(list((tmp_path / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    output = two.stdout + two.stderr
    assert output.count("epoch 2/2: train loss") == 1, output  # one line per epoch, from rank 0
    assert "x 2 ranks" in output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ranks_train_a_multilabel_head_like_one_process(tmp_path, python, subprocess_env):
    """Multi-label (sigmoid per genre, BCE, genre rows gathered across ranks for validation mAP) under
    torchrun: the weights and the validation figures of one process."""
    shards_dir = tmp_path / "shards"
    make_shard_set(shards_dir, COUNTS, num_classes=4, seed=6, multilabel=True)
    common = ("--task", "multilabel", "--norm", "group", "--max-steps-per-epoch", "2", "--epochs", "2")
    run([python, "-m", "train", *ddp_fit_argv(shards_dir, tmp_path / "one", *common)], subprocess_env)
    run(torchrun(python, 2, ddp_fit_argv(shards_dir, tmp_path / "two", *common)), subprocess_env)
    one, two = (load_checkpoint(tmp_path / name / "last.pt") for name in ("one", "two"))
    assert one["task"] == two["task"] and one["task"]["name"] == "multilabel"
    for key, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][key], value, atol=ATOL, rtol=RTOL, msg=key)
    for h1, h2 in zip(one["history"], two["history"], strict=True):
        for key in ("val_loss", "val_macro_map", "val_micro_map", "val_top_genre_accuracy", "train_hit_at_1"):
            assert h2[key] == pytest.approx(h1[key], rel=1e-4, abs=1e-5), key


def _worker_pid(parent: int, rank: int) -> int | None:
    """The pid of the child of ``parent`` whose environment says RANK=rank (torchrun's workers)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_stops_the_job_with_a_clear_error(how, shard_set, tmp_path, python, subprocess_env):
    """SIGKILL (a crash) or SIGSTOP (a hang) of rank 1 mid-run: torchrun exits non-zero in bounded time."""
    timeout_s = 8
    cmd = torchrun(
        python,
        2,
        ddp_fit_argv(shard_set, tmp_path / "run", "--epochs", "200", "--dist-timeout", str(timeout_s)),
    )
    log = (tmp_path / "torchrun.log").open("w+")
    proc = subprocess.Popen(
        cmd,
        env={**subprocess_env, "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "run" / "last.pt").exists():  # training has started on both ranks
            assert proc.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(0.2)
        victim = _worker_pid(proc.pid, 1)
        assert victim is not None, "rank 1's process not found among torchrun's children"
        os.kill(victim, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        lost_at = time.monotonic()
        rc = proc.wait(timeout=timeout_s + 60)
        took = time.monotonic() - lost_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = Path(log.name).read_text()
    print(f"{how}: the job stopped {took:.1f} s after rank 1 was lost")
    assert rc != 0, output
    assert "rank      : 1" in output and "Root Cause" in output, output
    if how == "killed":
        assert "Signal 9 (SIGKILL) received by PID" in output, output
        assert took < timeout_s, f"a killed rank should stop the job at once, took {took:.1f} s"
    else:
        # Rank 0 waits at most --dist-timeout in a collective, says why, and exits; torchrun then
        # stops the hung rank: SIGTERM, and SIGKILL 30 s later (its fixed grace period).
        assert f"did not answer within --dist-timeout {timeout_s} s" in output, output
        assert timeout_s - 1 < took < timeout_s + 30 + 20, f"{took:.1f} s\n{output}"
    # What was saved stays usable: the run resumes from its last complete epoch.
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] >= 1


def test_weight_ema_of_a_ddp_model_averages_the_plain_model(tmp_path):
    """Under torchrun the model is DistributedDataParallel: the EMA keeps the plain model's keys."""
    import torch.distributed as dist
    from torch import nn

    from train.ema import WeightEMA

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = build_model(ModelConfig("seed", 4))
        wrapped = nn.parallel.DistributedDataParallel(plain)
        ema = WeightEMA(wrapped, 0.5)
        assert ema.state_dict()["weights"].keys() == plain.state_dict().keys()
        with torch.no_grad():
            for p in plain.parameters():
                p.add_(1.0)
        ema.update(wrapped)
        moved = ema.model.state_dict()["classifier.4.bias"] - plain.state_dict()["classifier.4.bias"]
        assert torch.all(moved < 0)  # the average lags behind the weights it follows
    finally:
        dist.destroy_process_group()
