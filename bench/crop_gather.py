"""Crop gather speed: random 128-frame crops of the fine image, from the shards against a raw .npy memmap.

Short-chunk training reads, every step, a batch of random crops (B, 128, 128) out of the fine
images (N, 128, 1271) float16. One run, same data, same batches: N random fine images written

  * as HDF5 shards (``shards.write_shard`` with the ``mel_fine`` extra, 256 tracks a shard), read
    by ``train.dataset.ShardDataset(image="mel_fine", crop_frames=128)`` the way ``train fit``
    reads them: ``EpochBatchSampler(crop=...)`` batches of (index, start) rows through
    ``DataLoader(batch_size=None)``;
  * as one plain ``.npy`` file, read through ``np.load(mmap_mode="r")`` by a minimal Dataset
    doing the same gather (one fancy index over a sliding-window view of the memmap into a
    float32 batch) through the same DataLoader: all that differs is the shard layer (a batch's
    crops come from several shards, each its own memory map).

Warm page cache (every reader reads everything once untimed first), random order, batch 32,
one thread. Prints crops per CPU second of each (median of ``--repeats`` interleaved passes: CPU
time, because a shared machine inflates wall time) and the ratio; target ours >= 0.9x.

Usage: python bench/crop_gather.py [--images 2000] [--repeats 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import shards  # noqa: E402
from train.dataset import ShardDataset  # noqa: E402
from train.sampling import EpochBatchSampler  # noqa: E402

WIDTH, CROP, BATCH, SHARD = 1271, 128, 32, 256
FINE = {"name": "bench-fine", "n_mels": 128, "n_frames": WIDTH}


def write_data(folder: Path, n: int) -> None:
    """The same float16 images as shards (with a manifest) and as one .npy file."""
    rng = np.random.default_rng(0)
    images = rng.normal(-40, 10, size=(n, 128, WIDTH)).astype(np.float16)
    labels = rng.integers(0, 16, n)
    np.save(folder / "fine.npy", images)
    entries = []
    for index, start in enumerate(range(0, n, SHARD)):
        rows = slice(start, min(start + SHARD, n))
        name = shards.shard_name("train", index, -(-n // SHARD))
        count = rows.stop - rows.start
        checksum = shards.write_shard(
            folder / name,
            mel=np.zeros((count, 128, 128), np.float32),
            label=labels[rows],
            track_id=np.arange(rows.start, rows.stop) + 1,
            split="train",
            shard_index=index,
            num_shards=-(-n // SHARD),
            subset="large",
            recipe={"name": "bench"},
            class_names=[f"c{i}" for i in range(16)],
            extras={"mel_fine": (images[rows], {"recipe": FINE})},
        )
        entries.append({"name": name, "split": "train", "num_tracks": count, "checksum": checksum})
    shards.write_manifest(
        folder,
        {
            "format_version": shards.EXTRAS_FORMAT_VERSION,
            "subset": "large",
            "recipe": {"name": "bench"},
            "class_names": [f"c{i}" for i in range(16)],
            "shards": entries,
            "totals": {},
            "extras": {"mel_fine": {"recipe": FINE}},
        },
    )


def ours(folder: Path, sampler: EpochBatchSampler):
    return _passes(ShardDataset(folder, "train", image="mel_fine", crop_frames=CROP, verify=False), sampler)


def _passes(dataset, sampler: EpochBatchSampler):
    """One pass over the sampler's batches through ``DataLoader(batch_size=None)``, as ``train fit`` reads."""

    def one_pass() -> int:
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=0)
        return sum(len(x) for x, _ in loader)

    return one_pass


class NpyCrops(torch.utils.data.Dataset):
    """The baseline: one .npy memmap and its labels, the Dataset's own gather, nothing else."""

    def __init__(self, path: Path, labels: np.ndarray):
        images = np.load(path, mmap_mode="r")
        self.windows = np.lib.stride_tricks.sliding_window_view(images, CROP, axis=2)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, pairs: np.ndarray):
        out = np.empty((len(pairs), 128, CROP), np.float32)
        out[...] = self.windows[pairs[:, 0], :, pairs[:, 1]]
        return torch.from_numpy(out).unsqueeze(1), torch.from_numpy(self.labels[pairs[:, 0]])


def raw(folder: Path, sampler: EpochBatchSampler):
    dataset = NpyCrops(
        folder / "fine.npy", ShardDataset(folder, "train", image="mel_fine", verify=False).labels
    )
    return _passes(dataset, sampler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="crop-gather-", dir=args.dir))
    try:
        write_data(folder, args.images)
        sampler = EpochBatchSampler(args.images, BATCH, shuffle=True, seed=0, crop=(WIDTH, CROP))
        readers = {"ours (shards)": ours(folder, sampler), ".npy memmap": raw(folder, sampler)}
        for one_pass in readers.values():
            one_pass()  # warm the page cache
        rates = {name: [] for name in readers}
        for repeat in range(args.repeats):
            sampler.set_epoch(repeat)
            for name, one_pass in readers.items():  # interleaved: load changes hit both alike
                start = time.process_time()  # CPU time: one thread each, a busy machine inflates wall time
                count = one_pass()
                rates[name].append(count / (time.process_time() - start))
        median = {name: statistics.median(r) for name, r in rates.items()}
        print(
            f"crop gather: {args.images} fine images (128 x {WIDTH} float16), crops of {CROP}, batch {BATCH},"
        )
        machine = f"{platform.machine()}, Python {platform.python_version()}"
        print(f"warm cache, crops per CPU second, median of {args.repeats} passes; {machine}")
        print("| reader | crops/s |")
        print("|---|---|")
        for name, value in median.items():
            print(f"| {name} | {value:,.0f} |")
        ratio = median["ours (shards)"] / median[".npy memmap"]
        print(f"ours / .npy memmap: {ratio:.2f}x (target >= 0.9x)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
