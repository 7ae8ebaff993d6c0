"""Features straight from FMA's zip against unpack-then-features, on one generated fma_large-shaped zip.

FMA ships fma_large as one 93 GiB zip of bzip2-compressed MP3s, and only 49,598 of its
106,574 tracks have a top-level genre (the rest are never used). Two ways to get shards:

  (a) tree: unpack every member (``preprocess.download.unpack``, ``--jobs`` processes),
      then ``make features`` from the unpacked tree;
  (b) zip:  ``make features`` straight from the zip: each shard's worker decompresses only
      its own tracks' members, in memory.

The zip: a generated mini-FMA (``preprocess.synth``: real MP3s, mostly 30 s 320 kbit/s
stereo, with FMA-like bad files) plus unselected members (copies of its MP3s under ids
that tracks.csv does not list, so the plan never selects them, like fma_large's tracks
without a top genre) so that the selected share of members is fma_large's, 49,598 / 106,574.
Members are bzip2-compressed and sorted, as in FMA's zip (``preprocess.synth.zipped``).

One process runs (b) then (a) ``--repeats`` times (alternating, fresh folders, medians),
checks that both made the same shards (manifest checksums) and prints a markdown table:
seconds, (a) / (b), bytes decompressed and bytes written to disk by each (files created:
unpacked tree and shards), and what these rates mean for fma_large.

Usage: python bench/zip_features.py [--tracks 160] [--repeats 1] [--jobs N] [--shard-size 16]
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

from bench.unpack import cpu_model  # noqa: E402
from preprocess import download as dl  # noqa: E402
from preprocess import fma  # noqa: E402
from preprocess.driver import run_features  # noqa: E402
from preprocess.metadata import load_tracks, tracks_csv_path  # noqa: E402
from preprocess.options import FeatureOptions  # noqa: E402
from preprocess.plan import build_plan  # noqa: E402
from preprocess.synth.generator import generate  # noqa: E402
from preprocess.synth.zipped import zip_audio_tree  # noqa: E402
from shards import read_manifest  # noqa: E402

FMA_LARGE_TRACKS = 106_574
FMA_LARGE_SELECTED = 49_598  # tracks with a top-level genre
FMA_LARGE_ZIP_GIB = 93


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def make_dataset(root: Path, n_tracks: int, shard_size: int) -> tuple[Path, list[int]]:
    """Generate the mini-FMA, pad it with unselected members, zip its audio; return (zip, selected ids)."""
    gen = root / "gen"
    truth = generate(gen, n_tracks=n_tracks, seed=0, jobs=-1)
    plan = build_plan(FeatureOptions(gen, root / "unused", shard_size=shard_size))
    selected = [t for s in plan.specs for t in s.track_ids]
    audio = gen / "fma_large"
    mp3s = [
        audio / fma.audio_relpath(int(t)) for t, e in sorted(truth["tracks"].items()) if e["kind"] == "good"
    ]
    listed = set(int(t) for t in load_tracks(tracks_csv_path(gen)).index)
    target = round(len(selected) * FMA_LARGE_TRACKS / FMA_LARGE_SELECTED)
    n_members = sum(1 for p in audio.rglob("*") if p.is_file())
    filler_ids = (t for t in range(2, 156_000) if t not in listed)
    for k in range(max(0, target - n_members)):
        path = audio / fma.audio_relpath(next(filler_ids))
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mp3s[k % len(mp3s)], path)
    zip_path = zip_audio_tree(gen, "fma_large")
    shutil.rmtree(audio)
    return zip_path, selected


def fresh_fma_dir(root: Path, gen: Path, name: str, zip_path: Path) -> Path:
    """A new FMA_DIR holding the metadata and the zip (hard-linked, so making it costs nothing)."""
    fma_dir = root / name
    shutil.rmtree(fma_dir, ignore_errors=True)
    shutil.copytree(gen / "fma_metadata", fma_dir / "fma_metadata")
    os.link(zip_path, fma_dir / zip_path.name)
    return fma_dir


def checksums(shards: Path) -> list[tuple[str, str]]:
    return [(e["name"], e["checksum"]) for e in read_manifest(shards)["shards"]]


def run_pair(root: Path, zip_path: Path, archive: dl.Archive, jobs: int, shard_size: int) -> dict:
    """(b) then (a) once, in fresh folders: seconds, bytes written and the shards' checksums."""
    options = dict(jobs=jobs, shard_size=shard_size, force=True, progress=False)
    fma_dir = fresh_fma_dir(root, root / "gen", "zip", zip_path)
    t0 = time.perf_counter()
    run_features(FeatureOptions(fma_dir, root / "shards-zip", **options))
    zip_seconds = time.perf_counter() - t0

    fma_dir = fresh_fma_dir(root, root / "gen", "tree", zip_path)
    t0 = time.perf_counter()
    dl.unpack(fma_dir / zip_path.name, fma_dir, archive, jobs=jobs, progress=False)
    t1 = time.perf_counter()
    run_features(FeatureOptions(fma_dir, root / "shards-tree", **options))
    t2 = time.perf_counter()
    result = {
        "zip": zip_seconds,
        "unpack": t1 - t0,
        "tree features": t2 - t1,
        "tree": t2 - t0,
        "written zip": folder_bytes(root / "shards-zip"),
        "written tree": folder_bytes(fma_dir / "fma_large") + folder_bytes(root / "shards-tree"),
        "same": checksums(root / "shards-zip") == checksums(root / "shards-tree"),
    }
    shutil.rmtree(fma_dir)
    return result


def report(
    runs: list[dict],
    members: int,
    selected: int,
    all_bytes: int,
    selected_bytes: int,
    args: argparse.Namespace,
) -> bool:
    """Print the markdown table and the fma_large extrapolation; True if the shards were identical."""
    med = {k: statistics.median(r[k] for r in runs) for k in ("zip", "unpack", "tree features", "tree")}
    written_a, written_b = runs[-1]["written tree"], runs[-1]["written zip"]
    same = all(r["same"] for r in runs)
    mib = dl.MiB
    print(
        f"\nFeatures from the zip vs unpack + features: {members} members, {selected} selected, "
        f"--jobs {args.jobs}, shards of {args.shard_size}, median of {args.repeats}; {cpu_model()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; {datetime.date.today()}\n"
    )
    print("| way | seconds | decompressed | written to disk |")
    print("|---|---|---|---|")
    print(
        f"| (a) unpack all + features from the tree | {med['tree']:.1f} (unpack {med['unpack']:.1f} + "
        f"features {med['tree features']:.1f}) | {all_bytes / mib:.0f} MiB | {written_a / mib:.0f} MiB |"
    )
    print(
        f"| (b) features from the zip | {med['zip']:.1f} | {selected_bytes / mib:.0f} MiB | "
        f"{written_b / mib:.1f} MiB |"
    )
    print(
        f"\n(a) / (b): time {med['tree'] / med['zip']:.2f}x, bytes written {written_a / written_b:.0f}x; "
        f"shards identical (manifest checksums): {'yes' if same else 'NO'}"
    )
    # fma_large at these rates: unpacking scales with the zip's bytes, features with the selected tracks.
    features_a = med["tree features"] / selected * FMA_LARGE_SELECTED
    unpack = FMA_LARGE_ZIP_GIB * dl.GiB / (all_bytes / med["unpack"])
    features_b = med["zip"] / selected * FMA_LARGE_SELECTED
    extra = med["zip"] - med["tree features"]  # what reading the zip adds to one features run
    if extra > 0:
        print(
            f"features from the zip cost {extra:.1f} s more than from the tree per run: unpacking once "
            f"({med['unpack']:.1f} s) pays off after {med['unpack'] / extra:.1f} features runs "
            f"(e.g. several recipes)"
        )
    print(
        f"fma_large at these rates with {args.jobs} jobs: (a) {(unpack + features_a) / 60:.0f} min (unpack "
        f"{unpack / 60:.0f} + features {features_a / 60:.0f}), (b) {features_b / 60:.0f} min; disk besides "
        f"the {FMA_LARGE_ZIP_GIB} GiB zip: (a) ~{FMA_LARGE_ZIP_GIB * 1.03:.0f} GiB tree + shards, "
        f"(b) the shards only"
    )
    return same


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=160, help="mini-FMA rows in tracks.csv (default 160)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=joblib.cpu_count())
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-zip-", dir=args.dir) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        zip_path, selected = make_dataset(root, args.tracks, args.shard_size)
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
        wanted = {f"fma_large/{fma.audio_relpath(t)}" for t in selected}
        all_bytes = sum(i.file_size for i in infos)
        selected_bytes = sum(i.file_size for i in infos if i.filename in wanted)
        print(
            f"zip: {len(infos)} members ({zip_path.stat().st_size / dl.MiB:.0f} MiB), {len(selected)} "
            f"selected ({len(selected) / len(infos):.1%}; fma_large "
            f"{FMA_LARGE_SELECTED / FMA_LARGE_TRACKS:.1%}); made in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
        archive = dl.Archive(zip_path.name, "0" * 40, zip_path.stat().st_size, all_bytes)
        runs = [run_pair(root, zip_path, archive, args.jobs, args.shard_size) for _ in range(args.repeats)]
    same = report(runs, len(infos), len(selected), all_bytes, selected_bytes, args)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
