"""Whole-track prediction speed: the cost per second of audio against the first window, files/s
with 1 and 2 decoding processes, where the time goes; for a reference-image model and a chunk model.

One run, one generated folder of ``--files`` MP3s of ``--minutes`` minutes each
(44.1 kHz stereo, 256 kbit/s CBR, like most of FMA), scored on the CPU through
``train.predict.predict_tracks``, the code ``python -m train predict`` runs, by two
untrained models (weights do not change the speed):

* ``seed``: the reference CNN on the 128 x 128 reference image;
* ``shortchunk``: the short-chunk CNN on the fine image (128 x 1271), scored as the mean of
  its ten 128-frame chunks.

Each model runs: the whole track at predict's default hop (``--jobs 1``, and ``--jobs 2``
for ``seed``); the same without sharing frames between overlapping windows (every window
imaged on its own, as before); the whole track at the other hop (a whole window for ``seed``,
half a window for ``shortchunk``); the first window only (the old ``predict``, the baseline).

Passes alternate; each figure is the median of ``--repeats``. Prints a markdown table:
files/s, seconds of audio scored per second, CPU seconds per file and per second of audio
(all processes), and the share of the time in decoding, images and the model (summed over
the processes, so shares, not wall time); then, per model, the CPU and wall time per second
of audio against the first window's. The jobs-2/jobs-1 ratio of files/s is the pool's
speed-up; the ratio of CPU time per file says whether the pool wastes work (on a machine busy
with other work, two processes can get no more CPU than one).

Usage: python bench/predict.py [--files 8] [--minutes 3] [--repeats 3] [--models seed,shortchunk]
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
from preprocess.recipe import RECIPES, Recipe  # noqa: E402
from preprocess.synth.audio import encode_mp3  # noqa: E402
from train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from train.models import ModelConfig, build_model  # noqa: E402
from train.predict import (  # noqa: E402
    PredictOptions,
    Timings,
    describe_windows,
    predict_tracks,
    with_default_hop,
)
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


#: name -> (model, the image's recipe, training config): what predict reads from a checkpoint.
MODELS = {
    "seed": (ModelConfig("seed", 16), Recipe(), {}),
    "shortchunk": (ModelConfig("shortchunk", 16), RECIPES["fine"], {"image": "mel_fine", "crop_frames": 128}),
}


def make_checkpoint(path: Path, name: str) -> dict:
    model_config, recipe, config = MODELS[name]
    torch.manual_seed(0)
    model = build_model(model_config)
    save_checkpoint(
        path,
        {
            "model": model_config.to_dict(),
            "state_dict": model.state_dict(),
            "class_names": [f"g{i}" for i in range(16)],
            "recipe": recipe.to_dict(),
            "config": config,
            "normalization": None,
            "epoch": 0,
        },
    )
    return load_checkpoint(path)


def runs_of(name: str, scorer) -> dict[str, PredictOptions]:
    """The runs of one model, by label; the first is at predict's default hop, the last the first window."""
    window = Recipe.from_dict(scorer.recipe).duration_s
    default = with_default_hop(PredictOptions(), scorer).hop_s
    other, other_label = (window, "a") if default < window else (window / 2, "half")
    runs = {f"{name}: whole track, 1 job": PredictOptions(jobs=1)}
    if name == "seed":
        runs[f"{name}: whole track, 2 jobs"] = PredictOptions(jobs=2)
    runs[f"{name}: whole track, frames not shared"] = PredictOptions(jobs=1, share_frames=False)
    runs[f"{name}: whole track, hop {other_label} window"] = PredictOptions(jobs=1, hop_s=other)
    runs[f"{name}: first window"] = PredictOptions(jobs=1, first_only=True)
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="seed,shortchunk", help="comma-separated: seed, shortchunk")
    parser.add_argument("--threads", type=int, default=1, help="model CPU threads (predict's --threads)")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")

    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        root = Path(tmp)
        files = make_folder(root, args.files, args.minutes)
        scorers, configs = {}, {}
        for name in names:
            scorers[name] = TorchScorer(
                make_checkpoint(root / f"{name}.pt", name), "cpu", threads=args.threads
            )
            for label, options in runs_of(name, scorers[name]).items():
                configs[label] = (name, options)
            list(predict_tracks(files[:1], scorers[name], PredictOptions(first_only=True)))  # warm caches
        runs: dict[str, list[Timings]] = {label: [] for label in configs}
        for _ in range(args.repeats):
            for label, (name, options) in configs.items():
                timings = Timings()
                results = list(predict_tracks(files, scorers[name], options, timings))
                assert not timings.failed and len(results) == len(files), timings.failed
                runs[label].append(timings)

    def median(label: str, key) -> float:
        return statistics.median(key(t) for t in runs[label])

    print(
        f"\nWhole-track prediction, {args.files} MP3s x {args.minutes:g} min (44.1 kHz stereo, "
        f"256 kbit/s), untrained models on the CPU; median of {args.repeats}; {cpu_model()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}; "
        f"{datetime.date.today().isoformat()}\n"
    )
    print(
        "| run | windows/file | files/s | audio s per s | CPU s per file | CPU ms per audio s | decode "
        "| images | model |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label in configs:
        wall = median(label, lambda t: t.wall_s)
        audio = median(label, lambda t: t.audio_s)
        busy = {k: median(label, lambda t, k=k: getattr(t, k)) for k in ("decode_s", "image_s", "model_s")}
        total = sum(busy.values())
        windows = median(label, lambda t: t.windows) / args.files
        cpu = median(label, lambda t: t.cpu_s) / args.files
        cpu_per_audio = 1000 * median(label, lambda t: t.cpu_s / t.audio_s)
        print(
            f"| {label} | {windows:.1f} | {args.files / wall:.2f} | {audio / wall:.0f} | {cpu:.2f} | "
            f"{cpu_per_audio:.2f} | {busy['decode_s'] / total:.0%} | {busy['image_s'] / total:.0%} | "
            f"{busy['model_s'] / total:.0%} |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nLoad average at the end {load:.1f} on {os.cpu_count()} cores.")
    if "seed" in names:
        one = median("seed: whole track, 1 job", lambda t: t.wall_s)
        two = median("seed: whole track, 2 jobs", lambda t: t.wall_s)
        cpu_one = median("seed: whole track, 1 job", lambda t: t.cpu_s)
        cpu_two = median("seed: whole track, 2 jobs", lambda t: t.cpu_s)
        print(
            f"seed, 2 jobs vs 1: {one / two:.2f}x files/s; CPU time per file {cpu_two / cpu_one:.2f}x "
            f"(a busy machine gives the pool less than a core each)."
        )
    for name in names:
        labels = [label for label, (n, _) in configs.items() if n == name]
        first = labels[-1]
        for what, key in (("CPU", lambda t: t.cpu_s / t.audio_s), ("wall", lambda t: t.wall_s / t.audio_s)):
            base = median(first, key)
            ratios = ", ".join(
                f"{label.split(': ', 1)[1]} {median(label, key) / base:.2f}x"
                for label in labels[:-1]
                if "2 jobs" not in label
            )
            print(f"{name}, {what} time per second of audio vs the first window: {ratios}.")
        hop = describe_windows(PredictOptions(), scorers[name])
        print(f"{name}: predict's default hop ('whole track'): {hop} at 44.1 kHz.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
