"""Training on a shared machine: 1 torch thread against the default, with and without a competing process.

torch's default runs one intra-op thread per core, and at every layer its OpenMP threads wait for
each other. When another process keeps one core busy, the thread that shares that core holds back
all the others. This benchmark trains the seed CNN on the CPU (batches of 32 random 128x128
images, SGD with momentum as ``train fit`` builds it) with ``torch.set_num_threads(1)`` and with
the default (``train.threads.default_threads``: this process's CPU affinity), in alternating
passes, first on the machine as it is, then with one competing busy process (a Python loop, the
same priority) running throughout; it prints samples/s (medians of ``--repeats`` passes) and the
ratio 1 thread / default for both conditions, in one run.

Usage: python bench/threads.py [--steps 30] [--repeats 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.unpack import cpu_model  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.inference import place_model, prepare_input  # noqa: E402
from train.loop import build_optimizer  # noqa: E402
from train.models import ModelConfig, build_model  # noqa: E402
from train.threads import default_threads  # noqa: E402

BUSY = "while True:\n    pass\n"


def samples_per_s(threads: int, steps: int, batch: int, warmup: int = 3) -> float:
    """Training steps of the seed CNN with ``threads`` torch threads: samples/s after ``warmup`` steps."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    model = place_model(build_model(ModelConfig("seed", 16)), cpu).train()  # as train fit places it
    optimizer = build_optimizer(TrainConfig(), model)
    criterion = torch.nn.CrossEntropyLoss()
    x = prepare_input(torch.randn(batch, 1, 128, 128), cpu)
    y = torch.randint(0, 16, (batch,))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def measure(counts: list[int], args: argparse.Namespace) -> dict[int, float]:
    """Median samples/s per thread count, passes alternating between the counts."""
    runs: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(args.repeats):
        for n in counts:
            runs[n].append(samples_per_s(n, args.steps, args.batch))
    return {n: statistics.median(v) for n, v in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes per thread count and condition")
    parser.add_argument("--batch", type=int, default=32, help="batch size (train fit's default: 32)")
    args = parser.parse_args()
    default = default_threads()
    if default < 2:
        print(f"this process may use {default} CPU: nothing to compare", file=sys.stderr)
        return 1
    counts = [1, default]
    load_before = os.getloadavg()
    idle = measure(counts, args)
    busy_proc = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(1.0)
        busy = measure(counts, args)
    finally:
        busy_proc.kill()
        busy_proc.wait()
    load_after = os.getloadavg()
    print(
        f"bench/threads.py on {datetime.date.today()}: {cpu_model()}, {os.cpu_count()} cores, "
        f"this process may use {default}; torch {torch.__version__}; seed CNN, batch {args.batch}, "
        f"{args.steps} steps x {args.repeats} passes; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after\n"
    )
    print(f"| condition | 1 thread (samples/s) | {default} threads, the default | 1 thread / default |")
    print("|---|---|---|---|")
    for name, result in (("as the machine is", idle), ("one competing busy process", busy)):
        print(f"| {name} | {result[1]:.0f} | {result[default]:.0f} | {result[1] / result[default]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
