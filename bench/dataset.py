"""Dataset read speed: our memory-mapped shard Dataset against the reference's pickles and baselines.

One run, same data: N random 128x128 float32 images (default 20,000) written as
  * per-track pickle files, one per track, like the reference project's cache
    (a Dataset that opens and unpickles one file per sample, default collate);
  * HDF5 shards written with ``shards.write_shard`` (1,000 images each), read by
    ``train.dataset.ShardDataset`` in the loader configuration ``train`` uses:
    ``EpochBatchSampler`` (seeded shuffle, sorted indices per batch) and
    ``DataLoader(batch_size=None)``: one gather per batch;
  * one plain ``.npy`` file read through ``np.load(mmap_mode="r")`` with the same
    batch gather;
  * one in-RAM torch tensor indexed with the same batches.
Random order, batch 256, DataLoader workers 0 and 2, warm page cache (every
loader reads everything once untimed first). With ``--cold``, our own files are
also evicted from the page cache with ``posix_fadvise(DONTNEED)`` (no system-wide
cache drop) and read once more. Prints a markdown table of samples/s (median of
``--repeats`` passes) and the ratios against the targets:

  ours >= 0.8x the .npy memmap and >= 2.5x the pickle Dataset, each at its best worker count.

Then memory: a child process opens a shard set of many small shards and one of a
few big shards with the same images, reads every sample, and reports the growth
of its anonymous RSS (private memory; file-backed pages of the mapping are page
cache, reported apart): it must not grow with the number of shards.

Usage: python bench/dataset.py [--images 20000] [--repeats 3] [--workers 0 2] [--cold] [--dir DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
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

CLASSES = [f"class{i:02d}" for i in range(16)]
RECIPE = {"name": "bench-random"}
BATCH = 256


# -- data ----------------------------------------------------------------------


def images_block(start: int, stop: int, seed: int = 0) -> np.ndarray:
    """Deterministic random images start..stop: shape (stop - start, 128, 128) float32."""
    rng = np.random.default_rng([seed, start])
    return rng.normal(-40, 10, size=(stop - start, 128, 128)).astype(np.float32)


def labels_of(n: int) -> np.ndarray:
    return (np.arange(n) * 7 % len(CLASSES)).astype(np.int64)


def write_shard_set(folder: Path, n: int, shard_size: int) -> None:
    """N images as train shards of ``shard_size`` plus a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    num = -(-n // shard_size)
    labels = labels_of(n)
    entries = []
    for index in range(num):
        lo, hi = index * shard_size, min(n, (index + 1) * shard_size)
        name = shards.shard_name("train", index, num)
        checksum = shards.write_shard(
            folder / name,
            mel=images_block(lo, hi),
            label=labels[lo:hi],
            track_id=np.arange(lo, hi) + 1,
            split="train",
            shard_index=index,
            num_shards=num,
            subset="large",
            recipe=RECIPE,
            class_names=CLASSES,
        )
        entries.append({"name": name, "split": "train", "num_tracks": hi - lo, "checksum": checksum})
    shards.write_manifest(
        folder,
        {
            "format_version": shards.FORMAT_VERSION,
            "subset": "large",
            "recipe": RECIPE,
            "class_names": CLASSES,
            "shards": entries,
            "totals": {"train": {"tracks": n}},
        },
    )


def write_baselines(folder: Path, n: int, shard_size: int) -> None:
    """Per-track pickles (the reference cache) and one .npy file with the same images."""
    (folder / "pickles").mkdir(parents=True, exist_ok=True)
    labels = labels_of(n)
    out = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.float32, shape=(n, 128, 128))
    for lo in range(0, n, shard_size):
        hi = min(n, lo + shard_size)
        block = images_block(lo, hi)
        out[lo:hi] = block
        for i in range(lo, hi):
            with open(folder / "pickles" / f"{i:06d}.pkl", "wb") as fh:
                pickle.dump(
                    {"mel": block[i - lo], "label": int(labels[i])}, fh, protocol=pickle.HIGHEST_PROTOCOL
                )
    out.flush()
    del out
    np.save(folder / "labels.npy", labels)


# -- the four datasets ---------------------------------------------------------


class PickleDataset(torch.utils.data.Dataset):
    """The reference's access pattern: one file opened and unpickled per sample."""

    def __init__(self, folder: Path, n: int):
        self.folder, self.n = folder, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        with open(self.folder / f"{i:06d}.pkl", "rb") as fh:
            item = pickle.load(fh)
        return torch.from_numpy(item["mel"]).unsqueeze(0), item["label"]


class NpyDataset(torch.utils.data.Dataset):
    """A plain .npy memmap with the same batch gather as ours (opened lazily per process)."""

    def __init__(self, folder: Path):
        self.path = folder / "images.npy"
        self.labels = np.load(folder / "labels.npy")
        self._images = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices):
        if self._pid != os.getpid():
            self._images, self._pid = np.load(self.path, mmap_mode="r"), os.getpid()
        images = np.take(self._images, indices, axis=0)
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(self.labels[indices])

    def __getstate__(self):
        return {**self.__dict__, "_images": None, "_pid": None}


class TensorDataset(torch.utils.data.Dataset):
    """All images already in one in-RAM tensor, indexed per batch."""

    def __init__(self, folder: Path):
        self.images = torch.from_numpy(np.load(folder / "images.npy")).unsqueeze(1)
        self.labels = torch.from_numpy(np.load(folder / "labels.npy"))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices):
        # Advanced indexing, not index_select: on a busy 2-core machine index_select's
        # intra-op threads made it ~4x slower than a plain gather.
        idx = torch.from_numpy(np.asarray(indices))
        return self.images[idx], self.labels[idx]


def make_dataset(kind: str, folder: Path, n: int):
    """The dataset of one kind, built once (as ``train`` builds its Dataset once per run)."""
    return {
        "pickle": lambda: PickleDataset(folder / "pickles", n),
        "ours": lambda: ShardDataset(folder / "shards", "train"),
        "npy": lambda: NpyDataset(folder),
        "tensor": lambda: TensorDataset(folder),
    }[kind]()


def make_loader(kind: str, dataset, workers: int, epoch: int):
    """The DataLoader of one epoch: random order, batch 256 (built per epoch, as in ``train``)."""
    n = len(dataset)
    if kind == "pickle":
        sampler = torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(epoch))
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers)
    sampler = EpochBatchSampler(n, BATCH, shuffle=True, seed=0)
    sampler.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=sampler, num_workers=workers, prefetch_factor=4 if workers else None
    )


def timed_pass(kind: str, dataset, workers: int, epoch: int) -> float:
    """Samples/s of one full pass (loader construction and worker start included)."""
    start = time.perf_counter()
    seen = 0
    for _, y in make_loader(kind, dataset, workers, epoch):
        seen += len(y)
    elapsed = time.perf_counter() - start
    if seen != len(dataset):
        raise RuntimeError(f"{kind}: read {seen} samples, expected {len(dataset)}")
    return seen / elapsed


def evict(folder: Path) -> bool:
    """Drop our own files from the page cache (posix_fadvise DONTNEED); False if unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


# -- memory --------------------------------------------------------------------


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _trim() -> None:
    """Give freed heap back to the OS so RSS shows live memory, not allocator slack."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_probe(folder: Path) -> dict:
    """In a fresh process: RSS growth from opening the shard set and reading every sample."""
    _trim()
    before_anon, before_file = _status_kb("RssAnon"), _status_kb("RssFile")
    dataset = ShardDataset(folder, "train")
    opened_anon = _status_kb("RssAnon")
    sampler = EpochBatchSampler(len(dataset), BATCH, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=0)
    for _ in loader:
        pass
    del _
    _trim()
    return {
        "shards": len(dataset.shards),
        "images": len(dataset),
        "open_anon_mb": (opened_anon - before_anon) / 1024,
        "read_anon_mb": (_status_kb("RssAnon") - before_anon) / 1024,
        "read_file_mb": (_status_kb("RssFile") - before_file) / 1024,
        "open_mappings": len(dataset._readers),
    }


def run_rss_probe(folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-probe", str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- main ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20000, help="images in the benchmark set (20000)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (1000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median; 5)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader workers (0 2)")
    parser.add_argument("--cold", action="store_true", help="also time one pass after evicting our files")
    parser.add_argument(
        "--rss-images",
        type=int,
        default=4000,
        help="images for the memory check: as 400 shards of 10 and 4 of 1000 (4000)",
    )
    parser.add_argument("--dir", help="work folder (default: a temporary folder, removed at the end)")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe:
        print(json.dumps(rss_probe(Path(args.rss_probe))))
        return 0

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-dataset-"))
    work.mkdir(parents=True, exist_ok=True)
    n = args.images
    try:
        t0 = time.perf_counter()
        write_shard_set(work / "shards", n, args.shard_size)
        write_baselines(work, n, args.shard_size)
        print(
            f"wrote {n} images as {-(-n // args.shard_size)} shards, {n} pickles and one .npy "
            f"in {time.perf_counter() - t0:.0f} s ({work})",
            file=sys.stderr,
        )

        kinds = {
            "pickle": "per-track pickles (reference cache)",
            "ours": "shard Dataset (ours, as train uses)",
            "npy": ".npy memmap, same batch gather",
            "tensor": "in-RAM tensor",
        }
        # Rounds interleave the configurations, so a load change on this shared machine
        # hits all of them alike; each configuration's figure is the median over rounds.
        datasets = {kind: make_dataset(kind, work, n) for kind in kinds}
        configs = [(kind, workers) for workers in args.workers for kind in kinds]
        for kind, workers in configs:
            timed_pass(kind, datasets[kind], workers, epoch=99)  # warm the cache and the code paths
        speeds: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        for r in range(args.repeats):
            for kind, workers in configs:
                speeds[kind, workers].append(timed_pass(kind, datasets[kind], workers, epoch=r))
        results = {c: statistics.median(v) for c, v in speeds.items()}
        for (kind, workers), values in speeds.items():
            print(
                f"{kind:7s} workers={workers}: {results[kind, workers]:9.0f} samples/s "
                f"({', '.join(f'{s:.0f}' for s in values)})",
                file=sys.stderr,
            )
        del datasets
        cold = {}
        if args.cold:
            for kind in ("pickle", "ours", "npy"):
                dataset = make_dataset(kind, work, n)
                if evict(work):
                    cold[kind] = timed_pass(kind, dataset, 0, epoch=7)

        best = {kind: max(results[kind, w] for w in args.workers) for kind in kinds}
        best_workers = {kind: max(args.workers, key=lambda w, k=kind: results[k, w]) for kind in kinds}

        write_shard_set(work / "rss-many", args.rss_images, 10)
        write_shard_set(work / "rss-few", args.rss_images, 1000)
        many, few = run_rss_probe(work / "rss-many"), run_rss_probe(work / "rss-few")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    cpu = platform.processor() or platform.machine()
    try:
        model = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ][0]
        cpu = model
    except (OSError, IndexError):
        pass
    print(
        f"\n### Dataset read speed ({datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} cores, "
        f"torch {torch.__version__})\n"
    )
    print(
        f"{n:,} random 128x128 float32 images, random order, batch {BATCH}, warm page cache; "
        f"samples/s, median of {args.repeats} passes.\n"
    )
    header = "| dataset | " + " | ".join(f"workers {w}" for w in args.workers) + " | best | best / ours |"
    print(header)
    print("|" + "---|" * (len(args.workers) + 3))
    for kind, label in kinds.items():
        cells = " | ".join(f"{results[kind, w]:,.0f}" for w in args.workers)
        print(f"| {label} | {cells} | {best[kind]:,.0f} | {best[kind] / best['ours']:.2f} |")
    if cold:
        print(
            "\nCold cache (our files evicted with posix_fadvise), workers 0: "
            + ", ".join(f"{k} {v:,.0f}" for k, v in cold.items())
            + " samples/s"
        )

    # Paired ratios: ours against each baseline (at their best worker counts) within the same
    # round, median over rounds, so load changes on a shared machine cancel out.
    def paired(other: str) -> float:
        return statistics.median(
            a / b
            for a, b in zip(
                speeds["ours", best_workers["ours"]], speeds[other, best_workers[other]], strict=True
            )
        )

    vs_npy, vs_pickle = paired("npy"), paired("pickle")
    print("\nRatios: median over rounds of ours / baseline measured in the same round.")
    print(f"ours / .npy memmap = {vs_npy:.2f} (target >= 0.8): {'met' if vs_npy >= 0.8 else 'NOT met'}")
    print(f"ours / pickles = {vs_pickle:.2f} (target >= 2.5): {'met' if vs_pickle >= 2.5 else 'NOT met'}")
    print("best worker counts: " + ", ".join(f"{k} {w}" for k, w in best_workers.items()))
    print(
        "\nMemory after reading every sample once (child process, workers 0; anonymous RSS is private "
        "memory, file RSS is page cache of the mapped shards):\n"
    )
    print("| shard set | shards | anon RSS after open (MB) | anon RSS after reading (MB) | file RSS (MB) |")
    print("|---|---|---|---|---|")
    for label, r in (("many small", many), ("few big", few)):
        print(
            f"| {r['images']:,} images, {label} | {r['shards']} | {r['open_anon_mb']:.1f} | "
            f"{r['read_anon_mb']:.1f} | {r['read_file_mb']:.1f} |"
        )
    growth = many["read_anon_mb"] - few["read_anon_mb"]
    per_shard_kb = 1024 * growth / max(many["shards"] - few["shards"], 1)
    print(f"\nanonymous RSS, many minus few: {growth:+.1f} MB ({per_shard_kb:+.1f} KB per extra shard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
