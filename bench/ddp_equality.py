"""How far 2 torchrun ranks on CPU (gloo) land from 1 process, with GroupNorm and with BatchNorm.

One run: writes a small generated shard set (4 band-pattern classes), then for ``--norm group``
and ``--norm batch`` trains the ``seed`` model with the same seed and global batch twice, once as
1 process (batch B) and once as ``torchrun --nproc-per-node 2`` (B/2 per rank), and prints the
largest absolute and relative weight difference between the two, next to how far training moved
the weights from their initial values, how far a run with another seed lands (the scale of
"a different run") and how far 1 process with 2 threads lands from 1 process with 1 thread
(the scale of float rounding alone, as training amplifies it), plus the validation metrics.

With GroupNorm the difference is float rounding (the test in tests/test_distributed.py asserts it
within atol 1e-5, rtol 1e-4). With BatchNorm it is not: torch's SyncBatchNorm refuses CPU tensors,
so each CPU rank normalises with its own half-batch's statistics (on CUDA, train converts to
SyncBatchNorm and the global batch's statistics are used).

Usage: python bench/ddp_equality.py [--epochs 2] [--steps 5] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests._shardset import make_shard_set  # noqa: E402
from tests._slurm_cluster import free_ports  # noqa: E402
from train.checkpoint import load_checkpoint  # noqa: E402
from train.models import ModelConfig, build_model  # noqa: E402


def fit(run: Path, shards: Path, args, norm: str, seed: int, nproc: int, threads: int = 1) -> dict:
    """Train once (1 process, or torchrun with ``nproc`` ranks); the last checkpoint."""
    argv = [
        "fit",
        "--shards",
        str(shards),
        "--run",
        str(run),
        "--model",
        "seed",
        "--norm",
        norm,
        "--device",
        "cpu",
        "--batch-size",
        str(args.batch),
        "--seed",
        str(seed),
        "--epochs",
        str(args.epochs),
        "--max-steps-per-epoch",
        str(args.steps),
        "--no-verify-shards",
    ]
    if nproc == 1:
        cmd = [sys.executable, "-m", "train", *argv]
    else:
        (port,) = free_ports(1)
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            "-m",
            "--",
            "train",
            *argv,
        ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return load_checkpoint(run / "last.pt")


def differences(a: dict, b: dict) -> tuple[float, float]:
    """Largest |a - b| over all weights, and the largest |a - b| / max|a| of one tensor."""
    absolute = relative = 0.0
    for key, value in a.items():
        if not value.is_floating_point() or key.endswith(("running_mean", "running_var")):
            continue
        gap = float((value.double() - b[key].double()).abs().max())
        absolute = max(absolute, gap)
        relative = max(relative, gap / max(float(value.abs().max()), 1e-12))
    return absolute, relative


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps per epoch")
    parser.add_argument("--batch", type=int, default=16, help="global batch (each of 2 ranks: half)")
    args = parser.parse_args()
    print(
        f"seed model, SGD, global batch {args.batch}, {args.epochs} x {args.steps} steps, "
        f"torch {torch.__version__}, CPU, gloo, OMP_NUM_THREADS=1"
    )
    print(
        "| norm | max abs diff 1 proc vs 2 ranks | max rel diff | 1 vs 2 threads (max abs) | "
        "moved from init | other seed | val acc 1 proc / 2 ranks | val loss 1 proc / 2 ranks |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="ddp-equality-") as tmp:
        root = Path(tmp)
        shards = root / "shards"
        make_shard_set(shards, {"train": [48, 48], "validation": [32], "test": [8]}, num_classes=4, seed=5)
        for norm in ("group", "batch"):
            one = fit(root / f"{norm}-1", shards, args, norm, seed=4, nproc=1)
            two = fit(root / f"{norm}-2", shards, args, norm, seed=4, nproc=2)
            other = fit(root / f"{norm}-other", shards, args, norm, seed=5, nproc=1)
            threads = fit(root / f"{norm}-threads", shards, args, norm, seed=4, nproc=1, threads=2)
            torch.manual_seed(4)
            initial = build_model(ModelConfig(**one["model"])).state_dict()
            absolute, relative = differences(one["state_dict"], two["state_dict"])
            moved, _ = differences(one["state_dict"], initial)
            apart, _ = differences(one["state_dict"], other["state_dict"])
            rounding, _ = differences(one["state_dict"], threads["state_dict"])
            h1, h2 = one["history"][-1], two["history"][-1]
            print(
                f"| {norm} | {absolute:.2e} | {relative:.2e} | {rounding:.2e} | {moved:.2e} | "
                f"{apart:.2e} | "
                f"{h1['val_accuracy']:.3f} / {h2['val_accuracy']:.3f} | "
                f"{h1['val_loss']:.4f} / {h2['val_loss']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
