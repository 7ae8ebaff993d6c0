"""Memory layout of the models on the CPU: channels-last against torch's default (contiguous) layout.

``train.inference`` puts every model and batch in channels-last memory, on the CPU as on CUDA
(oneDNN's convolutions run faster on it). This measures what that buys, side by side in one
process: for each model, a batch of 32 random images (B, 1, 128, 128) of the same seed, and
``--repeats`` interleaved passes of each layout of

  * a training step: forward, cross-entropy, backward, AdamW step (``train`` mode);
  * a scoring pass: forward without gradients (``eval`` mode).

Prints the milliseconds per batch (median over the passes, CPU time, because a shared machine
inflates wall time) and contiguous / channels-last (above 1: channels-last is faster).

Usage: python bench/channels_last.py [--threads 1] [--repeats 9]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.models import ModelConfig, build_model  # noqa: E402

MODELS = {
    "seed": {},
    "resnet": {},
    "shortchunk (freq_pools 4)": {"freq_pools": 4},
}
BATCH = 32


def _model_and_batch(name: str, options: dict, channels_last: bool, train: bool):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name.split()[0], 16, options)).train(train)
    x = torch.randn(BATCH, 1, 128, 128)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def _one_pass(model, x, y, optimizer, train: bool) -> float:
    """CPU seconds of one training step or one scoring pass."""
    start = time.process_time()
    if train:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        with torch.no_grad():
            model(x)
    return time.process_time() - start


def measure(name: str, options: dict, train: bool, repeats: int) -> tuple[float, float]:
    """Median CPU ms per batch: (contiguous, channels-last), passes interleaved."""
    y = torch.randint(0, 16, (BATCH,), generator=torch.Generator().manual_seed(0))
    runs = []
    for channels_last in (False, True):
        model, x = _model_and_batch(name, options, channels_last, train)
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        for _ in range(2):  # warm-up: oneDNN picks and caches its kernels
            _one_pass(model, x, y, optimizer, train)
        runs.append((model, x, optimizer, []))
    for _ in range(repeats):
        for model, x, optimizer, times in runs:
            times.append(_one_pass(model, x, y, optimizer, train))
    return tuple(1000 * statistics.median(times) for *_, times in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved passes of each layout")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"{machine}, torch {torch.__version__}, {args.threads} thread(s), ", end="")
    print(f"batch {BATCH} of 128 x 128, median of {args.repeats}")
    print(f"{'model':<46} {'pass':<6} {'contiguous ms':>13} {'channels-last ms':>16} {'ratio':>6}")
    for name, options in MODELS.items():
        for train in (True, False):
            plain, last = measure(name, options, train, args.repeats)
            kind = "train" if train else "score"
            print(f"{name:<46} {kind:<6} {plain:>13.0f} {last:>16.0f} {plain / last:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
