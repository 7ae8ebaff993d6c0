"""Whole-track prediction speed: files/s with 1 and 2 decoding processes, where the time goes.

One run, one generated folder of ``--files`` MP3s of ``--minutes`` minutes each
(44.1 kHz stereo, 256 kbit/s CBR, like most of FMA), scored by an untrained
``seed`` model (weights do not change the speed) on the CPU through
``train.predict.predict_tracks``, the code ``python -m train predict`` runs:

* whole track, default hop (half a window), ``--jobs 1`` and ``--jobs 2``;
* whole track, hop of one window (no overlap), ``--jobs 1``;
* first window only (the old ``predict``), ``--jobs 1``.

Passes alternate; each figure is the median of ``--repeats``. Prints a markdown
table: files/s, seconds of audio scored per second, CPU seconds per file and per
second of audio (all processes), and the share of the time in decoding,
images and the model (summed over the processes, so shares, not wall time). The
jobs-2/jobs-1 ratio of files/s is the pool's speed-up; the ratio of CPU time per
file says whether the pool wastes work (on a machine busy with other work, two
processes can get no more CPU than one, and the wall-time speed-up says little).

Usage: python bench/predict.py [--files 8] [--minutes 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.unpack import cpu_model  # noqa: E402
from preprocess.recipe import Recipe  # noqa: E402
from preprocess.synth.audio import encode_mp3  # noqa: E402
from train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from train.models import ModelConfig, build_model  # noqa: E402
from train.predict import PredictOptions, Timings, predict_tracks  # noqa: E402
from train.scorers import TorchScorer  # noqa: E402

SR = 44100


def make_folder(folder: Path, files: int, minutes: float) -> list[Path]:
    """``files`` MP3s of ``minutes`` each: drifting tones over noise, different per file."""
    paths = []
    for i in range(files):
        rng = np.random.default_rng(i)
        n = int(minutes * 60 * SR)
        t = np.arange(n) / SR
        pitch = (110 + 40 * i) * 2.0 ** ((t % 60) / 30)
        y = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / SR) + 0.05 * rng.standard_normal(n)
        path = folder / f"track{i:02d}.mp3"
        path.write_bytes(encode_mp3(np.stack([y, y[::-1]], 1).astype(np.float32), SR, 256, vbr=False))
        paths.append(path)
    return paths


def make_checkpoint(path: Path) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig("seed", 16))
    save_checkpoint(
        path,
        {
            "model": ModelConfig("seed", 16).to_dict(),
            "state_dict": model.state_dict(),
            "class_names": [f"g{i}" for i in range(16)],
            "recipe": Recipe().to_dict(),
            "config": {},
            "normalization": None,
            "epoch": 0,
        },
    )
    return load_checkpoint(path)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-threads", type=int, default=1, help="as predict's --model-threads")
    args = parser.parse_args()

    window = Recipe().duration_s
    configs = {
        "whole track, 1 job": PredictOptions(jobs=1),
        "whole track, 2 jobs": PredictOptions(jobs=2),
        "whole track, hop = window, 1 job": PredictOptions(jobs=1, hop_s=window),
        "first window, 1 job": PredictOptions(jobs=1, first_only=True),
    }
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        files = make_folder(root, args.files, args.minutes)
        scorer = TorchScorer(make_checkpoint(root / "best.pt"), "cpu", threads=args.model_threads)
        list(predict_tracks(files[:1], scorer, PredictOptions(first_only=True)))  # warm caches, imports
        runs: dict[str, list[Timings]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            for name, options in configs.items():
                timings = Timings()
                results = list(predict_tracks(files, scorer, options, timings))
                assert not timings.failed and len(results) == len(files), timings.failed
                runs[name].append(timings)

    def median(name: str, key) -> float:
        return statistics.median(key(t) for t in runs[name])

    print(
        f"\nWhole-track prediction, {args.files} MP3s x {args.minutes:g} min (44.1 kHz stereo, "
        f"256 kbit/s), seed model on the CPU; median of {args.repeats}; {cpu_model()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}; "
        f"{datetime.date.today().isoformat()}\n"
    )
    print(
        "| run | windows/file | files/s | audio s per s | CPU s per file | CPU ms per audio s | decode "
        "| images | model |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in configs:
        wall = median(name, lambda t: t.wall_s)
        audio = median(name, lambda t: t.audio_s)
        busy = {k: median(name, lambda t, k=k: getattr(t, k)) for k in ("decode_s", "image_s", "model_s")}
        total = sum(busy.values())
        windows = median(name, lambda t: t.windows) / args.files
        cpu = median(name, lambda t: t.cpu_s) / args.files
        cpu_per_audio = 1000 * median(name, lambda t: t.cpu_s / t.audio_s)
        print(
            f"| {name} | {windows:.1f} | {args.files / wall:.2f} | {audio / wall:.0f} | {cpu:.2f} | "
            f"{cpu_per_audio:.2f} | {busy['decode_s'] / total:.0%} | {busy['image_s'] / total:.0%} | "
            f"{busy['model_s'] / total:.0%} |"
        )
    one = median("whole track, 1 job", lambda t: t.wall_s)
    two = median("whole track, 2 jobs", lambda t: t.wall_s)
    cpu_one = median("whole track, 1 job", lambda t: t.cpu_s)
    cpu_two = median("whole track, 2 jobs", lambda t: t.cpu_s)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nCPU time per file with 2 jobs vs 1: {cpu_two / cpu_one:.2f}x; load average at the end "
        f"{load:.1f} on {os.cpu_count()} cores (a busy machine gives the pool less than a core each)."
    )
    print(f"2 jobs vs 1: {one / two:.2f}x files/s.")
    for what, key in (("wall", lambda t: t.wall_s / t.audio_s), ("CPU", lambda t: t.cpu_s / t.audio_s)):
        cost = {name: median(name, key) for name in configs}
        first = cost["first window, 1 job"]
        print(
            f"{what} time per second of audio vs first window: whole track "
            f"{cost['whole track, 1 job'] / first:.2f}x, hop = window "
            f"{cost['whole track, hop = window, 1 job'] / first:.2f}x."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
