"""Unpacking speed: FMA's zips hold bzip2-compressed MP3s, so unpacking is CPU-bound.

One run, one generated zip laid out like fma_large.zip (``fma_large/NNN/NNNNNN.mp3``
members of incompressible bytes, as MP3 frames are, bzip2-compressed): the plain
``zipfile.ZipFile.extractall`` (baseline), our ``preprocess.download.unpack`` with
1 job, and with all cores. Passes alternate; each figure is the median of
``--repeats``. Prints a markdown table with the machine and date, MiB/s of unpacked
data, the ratios, and what that means for fma_large's 93 GiB.

Usage: python bench/unpack.py [--members 48] [--member-mib 1] [--repeats 3] [--jobs N]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import joblib  # noqa: E402
import numpy as np  # noqa: E402

from preprocess import download as dl  # noqa: E402
from preprocess.fma import audio_relpath  # noqa: E402
from preprocess.synth.zipped import write_fma_zip  # noqa: E402

FMA_LARGE_GIB = 93


def make_zip(path: Path, members: int, member_bytes: int) -> int:
    """A bzip2 zip of ``members`` incompressible files; returns the unpacked bytes."""
    rng = np.random.default_rng(0)
    write_fma_zip(
        path, ((f"fma_large/{audio_relpath(1000 + i)}", rng.bytes(member_bytes)) for i in range(members))
    )
    return members * member_bytes


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--members", type=int, default=48)
    parser.add_argument("--member-mib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=joblib.cpu_count())
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-unpack-") as tmp:
        root = Path(tmp)
        source = root / "fma_large.zip"
        total = make_zip(source, args.members, int(args.member_mib * dl.MiB))
        archive = dl.Archive("fma_large.zip", "0" * 40, source.stat().st_size, total)
        # Batches small enough that every worker gets several, as on the real 93 GiB zip.
        dl.BATCH_BYTES = max(1, source.stat().st_size // (4 * args.jobs))

        def baseline(out: Path) -> None:
            with zipfile.ZipFile(source) as zf:
                zf.extractall(out)

        def ours(jobs: int):
            return lambda out: dl.unpack(source, out, archive, jobs=jobs, progress=False)

        runs = {
            "zipfile.extractall (baseline)": baseline,
            "ours, 1 job": ours(1),
            f"ours, {args.jobs} jobs": ours(args.jobs),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                out = root / "out"
                start = time.perf_counter()
                run(out)
                seconds[name].append(time.perf_counter() - start)
                shutil.rmtree(out)

    mib = total / dl.MiB
    rate = {name: mib / statistics.median(s) for name, s in seconds.items()}
    base = rate["zipfile.extractall (baseline)"]
    print(
        f"\nUnpacking speed, {args.members} members x {args.member_mib:g} MiB (bzip2), median of "
        f"{args.repeats}; {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{datetime.date.today().isoformat()}\n"
    )
    print("| unpack | MiB/s | vs baseline | fma_large (93 GiB) at this rate |")
    print("|---|---|---|---|")
    for name, r in rate.items():
        minutes = FMA_LARGE_GIB * 1024 / r / 60
        print(f"| {name} | {r:.1f} | {r / base:.2f}x | {minutes:.0f} min |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
