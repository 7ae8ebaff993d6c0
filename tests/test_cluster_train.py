"""`make train-slurm` (cluster/train.sbatch) on a real private SLURM cluster: 2 SLURM tasks, each a
torchrun agent with one CPU process, meet in torchrun's c10d rendezvous (as two nodes would) and
train with gloo.

Run only under `flock /tmp/fma-cluster.lock` (it starts munged, slurmctld and slurmd: the `slurm`
fixture of tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests._shardset import make_shard_set
from tests._slurm_cluster import free_ports
from train.checkpoint import load_checkpoint
from train.models import ModelConfig, build_model

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]


def test_sbatch_trains_with_two_tasks_in_one_rendezvous_and_writes_best(
    slurm, tmp_path, python, repo_root, subprocess_env
):
    shards = tmp_path / "shards"
    make_shard_set(shards, {"train": [24, 24], "validation": [16], "test": [8]}, num_classes=4, seed=3)
    run = tmp_path / "run"
    (port,) = free_ports(1)
    env = {**subprocess_env, **slurm.env, "RDZV_PORT": str(port), "OMP_NUM_THREADS": "1"}
    # `make train-slurm` as a user runs it; PY is this interpreter, STAMP= skips `make setup`.
    # Two agents on the one node stand for two nodes; --batch-size 32 (default) is 16 per rank.
    cmd = [
        "make",
        "--no-print-directory",
        "-C",
        str(repo_root),
        "train-slurm",
        f"PY={python}",
        "STAMP=",
        f"RUN={run}",
        f"SHARDS={shards}",
        "MODEL=seed",
        "EPOCHS=2",
        "DEVICE=cpu",
        "NPROC=1",
        "GPUS=0",
        "SLURM_ARGS=--ntasks-per-node=2 --cpus-per-task=1",
    ]
    submitted = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    job = done.stdout.strip().split()[-1]  # "Submitted batch job N"
    assert job.isdigit(), done.stdout
    slurm.wait_queue_empty(timeout_s=400)
    print(f"make train-slurm: submitted to finished in {time.monotonic() - submitted:.0f} s")

    log = (run / "slurm" / f"train-{job}.out").read_text()
    assert "2 agent(s) x 1 process(es)" in log, log
    assert "x 2 ranks" in log and log.count("epoch 2/2: train loss") == 1, log
    assert log.count("checkpoints:") == 1, "rank 0 alone reports (and writes)"
    # Each rank's output is kept under the run folder as well (one folder per agent).
    rank_logs = list((run / "slurm" / f"ranks-{job}").rglob("stdout.log"))
    assert len(rank_logs) == 2, rank_logs
    assert sum("epoch 2/2: train loss" in (p.parent / "stderr.log").read_text() for p in rank_logs) == 1
    # Outputs, not only the job state: a best.pt that loads and builds its model.
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] in (1, 2) and best["history"][0]["train_samples"] == 32
    model = build_model(ModelConfig(**best["model"]))
    model.load_state_dict(best["state_dict"])
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
