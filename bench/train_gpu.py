"""Training throughput on CUDA: is the shard Dataset fast enough to feed the GPU?

One run: writes ~50k random 128x128 images as shards (fma_large size, 1,000 per
shard), then trains the chosen model for a fixed number of steps with bf16
autocast and channels_last, exactly as ``train fit`` does (``train.inference``),
fed by
  (a) the shard Dataset through a DataLoader (pinned memory, non-blocking copies,
      ``train``'s default worker count),
  (b) ``--preload gpu``: the whole split on the GPU, indexed per batch,
  (c) random tensors already on the GPU (the model's own ceiling),
and prints samples/s for each and the ratio (a) / (c) (target >= 0.8).

Usage: python bench/train_gpu.py [--images 50000] [--steps 300] [--batch 256] [--model seed]
(runs on CPU too, for a smoke test: --device cpu --images 2000 --steps 5)
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.dataset import write_shard_set  # noqa: E402
from train.dataset import ShardDataset  # noqa: E402
from train.inference import (  # noqa: E402
    BatchSource,
    autocast,
    place_model,
    prepare_input,
    resolve_device,
    resolve_workers,
)
from train.models import ModelConfig, build_model  # noqa: E402
from train.sampling import EpochBatchSampler  # noqa: E402


def run_steps(model, optimizer, batches, steps: int, warmup: int, device) -> float:
    """Samples/s of ``steps`` training steps after ``warmup`` untimed ones."""
    criterion = torch.nn.CrossEntropyLoss()
    seen, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        with autocast(device):
            loss = criterion(model(prepare_input(x, device)).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
        if i + 1 == warmup + steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def endless(source: BatchSource):
    epoch = 0
    while True:
        yield from source.epoch(epoch)
        epoch += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=50000)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--model", default="seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: train's default)")
    parser.add_argument("--dir", help="work folder (default: temporary, removed at the end)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        t0 = time.perf_counter()
        if not (work / "shards" / "manifest.json").exists():
            write_shard_set(work / "shards", args.images, 1000)
        print(f"shards ready in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {}
        workers = resolve_workers(args.workers, device, "none")
        for label, preload in (
            ("(a) shard Dataset + DataLoader", "none"),
            ("(b) --preload gpu", "gpu"),
            ("(c) random tensors on the GPU", None),
        ):
            torch.manual_seed(0)
            model = place_model(build_model(ModelConfig(args.model, 16)), device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
            if preload is None:
                x = torch.randn(args.batch, 1, 128, 128, device=device)
                y = torch.randint(0, 16, (args.batch,), device=device)
                batches = itertools.repeat((x, y))
            else:
                dataset = ShardDataset(work / "shards", "train")
                sampler = EpochBatchSampler(len(dataset), args.batch, shuffle=True, seed=0, drop_last=True)
                batches = endless(BatchSource(dataset, sampler, device, preload, workers, 0))
            results[label] = run_steps(model, optimizer, batches, args.steps, args.warmup, device)
            print(f"{label}: {results[label]:,.0f} samples/s", flush=True)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"\n| {args.model}, batch {args.batch}, {args.images:,} images, {name}, {workers} workers "
        f"| samples/s | / (c) |\n|---|---|---|"
    )
    ceiling = results["(c) random tensors on the GPU"]
    for label, value in results.items():
        print(f"| {label} | {value:,.0f} | {value / ceiling:.2f} |")
    ratio = results["(a) shard Dataset + DataLoader"] / ceiling
    print(f"\n(a) / (c) = {ratio:.2f} (target >= 0.8): {'met' if ratio >= 0.8 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
