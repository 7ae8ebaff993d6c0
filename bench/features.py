"""Features speed: our shard task against the reference recipe, on the same generated MP3s.

One run, same files: a generated mini-FMA (``preprocess.synth``; its good tracks:
mostly 44.1 kHz stereo 320 kbit/s, some other rates, mono, VBR).

* reference: per track ``librosa.load(sr=None, mono, 29.5 s)`` (libsndfile), resample
  when below 22050 Hz, ``librosa.feature.melspectrogram`` + ``power_to_db``, one
  pickle file per track (the reference project's cache);
* ours: ``preprocess.driver.compute_shard`` (miniaudio decode, cached filterbank,
  the image, the HDF5 shard written atomically and read back);
* decode only: ``miniaudio.mp3_read_file_f32``, ``soundfile.read`` (libsndfile +
  mpg123) and our ``preprocess.audio.decode`` (dr_mp3 without the copy) per track;
  the fastest is the floor.

For 1 job (in this process, BLAS limited to one thread as in a pool worker) and
for all cores (a joblib process pool, the tracks cut into one task per worker for
both sides: one shard each for ours), passes alternate reference / ours;
each figure is the median of ``--repeats`` pairs. Prints a markdown table with
the machine and date and the targets:

  ours >= 1.7x the reference per core; ours <= 1.5x the decode-only floor per track;
  ours on 2 jobs >= 1.6x ours on 1 job.

Usage: python bench/features.py [--tracks 64] [--repeats 3] [--jobs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import joblib  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import ThreadpoolController  # noqa: E402

from preprocess import fma  # noqa: E402
from preprocess.assign import ShardSpec  # noqa: E402
from preprocess.driver import compute_shard  # noqa: E402
from preprocess.recipe import RECIPES  # noqa: E402


def reference_track(path: str, cache_dir: str) -> None:
    """The reference project's per-track work: librosa.load + melspectrogram + one pickle."""
    import librosa

    y, sr = librosa.load(path, sr=None, mono=True, duration=29.5)
    if sr < 22050:
        y = librosa.resample(y, orig_sr=sr, target_sr=22050)
        sr = 22050
    hop = int(sr * 29.5 / 128) + 1
    S = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=2 * hop, hop_length=hop, n_mels=128, fmax=11025)
    image = librosa.power_to_db(S)
    with open(Path(cache_dir) / (Path(path).stem + ".pkl"), "wb") as fh:
        pickle.dump(image, fh)


def reference_chunk(paths: list[str], cache_dir: str) -> int:
    for p in paths:
        reference_track(p, cache_dir)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def ours_chunk(task: dict) -> int:
    compute_shard(task)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def decode_ours(path: str) -> None:
    from preprocess.audio import decode

    decode(path, max_seconds=29.5)


def decode_soundfile(path: str) -> None:
    import soundfile

    soundfile.read(path, dtype="float32")


def busy_work(rounds: int = 40) -> int:
    """A fixed CPU-bound job (FFTs) to measure how many cores are really free right now."""
    import scipy.fft

    x = np.random.default_rng(0).standard_normal((32, 20328)).astype(np.float32)
    for _ in range(rounds):
        scipy.fft.rfft(x, axis=-1)
    return rounds


def _tasks(tracks: list[tuple[int, int]], audio_dir: Path, out: Path, n_parts: int) -> list[dict]:
    tasks = []
    for k in range(n_parts):
        part = tracks[k * len(tracks) // n_parts : (k + 1) * len(tracks) // n_parts]
        spec = ShardSpec(name=f"train-{k:05d}-of-{n_parts:05d}.h5", split="train", shard_index=k,
                         num_shards=n_parts, track_ids=tuple(t for t, _ in part),
                         labels=tuple(label for _, label in part))
        tasks.append({"spec": spec.to_dict(), "audio_dir": str(audio_dir), "out": str(out),
                      "recipe": RECIPES["reference"].to_dict(), "subset": "large",
                      "class_names": list(fma.CLASS_NAMES), "timeout_s": 120.0, "compression": None})
    return tasks


def _clear(folder: Path) -> None:
    for p in folder.iterdir():
        p.unlink()


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=64, help="tracks to generate (about 90%% are good)")
    parser.add_argument("--repeats", type=int, default=3, help="reference/ours pairs per setting")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="workers for 'all cores'")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from preprocess.synth import generate

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"generating {args.tracks} tracks ...", file=sys.stderr)
        truth = generate(root / "fma", args.tracks, seed=1)
        good = sorted((int(k), fma.CLASS_NAMES.index(t["genre_top"]) if t["genre_top"] else 0)
                      for k, t in truth["tracks"].items() if t["kind"] == "good")
        audio_dir = root / "fma" / "fma_large"
        paths = [str(audio_dir / fma.audio_relpath(t)) for t, _ in good]
        n = len(paths)
        pickles, shards = root / "pickles", root / "shards"
        pickles.mkdir()
        shards.mkdir()

        controller = ThreadpoolController()
        rss: list[int] = []

        def timed(fn) -> float:
            _clear(pickles)
            _clear(shards)
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start

        def ref_1():
            with controller.limit(limits=1):  # one core, as in a pool worker
                for p in paths:
                    reference_track(p, str(pickles))

        def ours_1():
            with controller.limit(limits=1):
                compute_shard(_tasks(good, audio_dir, shards, 1)[0])

        def decode_1(fn):
            def run():
                for p in paths:
                    fn(p)
            return run

        with joblib.Parallel(n_jobs=args.jobs) as pool:
            def ref_n():
                chunks = [paths[k * n // args.jobs : (k + 1) * n // args.jobs] for k in range(args.jobs)]
                pool(joblib.delayed(reference_chunk)(c, str(pickles)) for c in chunks)

            def ours_n():
                tasks = _tasks(good, audio_dir, shards, args.jobs)
                rss.extend(pool(joblib.delayed(ours_chunk)(t) for t in tasks))

            # Warm up: imports and caches in this process and every worker.
            ref_1()
            ours_1()
            ref_n()
            ours_n()
            rows = []
            for _ in range(args.repeats):
                row = {"ref_1": timed(ref_1), "ours_1": timed(ours_1),
                       "soundfile": timed(decode_1(decode_soundfile)),
                       "ours decode": timed(decode_1(decode_ours)),
                       "ref_n": timed(ref_n), "ours_n": timed(ours_n)}
                row["ours_1b"] = timed(ours_1)  # pairs ours_n with a 1-job run on either side
                # The same fixed job, once per worker, one after the other and then in the pool:
                # the speed-up any work could get from the pool on this machine right now.
                row["busy_1"] = timed(lambda: [busy_work() for _ in range(args.jobs)])
                row["busy_n"] = timed(lambda: pool(joblib.delayed(busy_work)() for _ in range(args.jobs)))
                rows.append(row)

    def med(f) -> float:
        return statistics.median(f(r) for r in rows)

    decoders = ("soundfile", "ours decode")
    fastest = min(decoders, key=lambda k: med(lambda r: r[k]))
    ref1, ours1 = n / med(lambda r: r["ref_1"]), n / med(lambda r: r["ours_1"])
    refn, oursn = n / med(lambda r: r["ref_n"]), n / med(lambda r: r["ours_n"])
    jobs = args.jobs
    table = [
        ("reference, 1 job (tracks/s)", f"{ref1:.1f}", ""),
        ("ours, 1 job (tracks/s)", f"{ours1:.1f}", ""),
        ("ours / reference, 1 job", f"{med(lambda r: r['ref_1'] / r['ours_1']):.2f}x", ">= 1.7x"),
        (f"reference, {jobs} jobs (tracks/s)", f"{refn:.1f}", ""),
        (f"ours, {jobs} jobs (tracks/s)", f"{oursn:.1f}", ""),
        (f"ours / reference, {jobs} jobs", f"{med(lambda r: r['ref_n'] / r['ours_n']):.2f}x", ""),
        (f"ours {jobs} jobs / ours 1 job",
         f"{med(lambda r: (r['ours_1'] + r['ours_1b']) / 2 / r['ours_n']):.2f}x",
         ">= 1.6x" if jobs == 2 else ""),
        (f"a fixed CPU job, {jobs} jobs / 1 job (cores free right now)",
         f"{med(lambda r: r['busy_1'] / r['busy_n']):.2f}x", ""),
        *((f"decode only, {k} (ms/track)", f"{med(lambda r, k=k: r[k]) / n * 1e3:.1f}", "")
          for k in decoders),
        ("ours, 1 job (ms/track)", f"{med(lambda r: r['ours_1']) / n * 1e3:.1f}", ""),
        (f"ours / fastest decode only ({fastest})", f"{med(lambda r: r['ours_1'] / r[fastest]):.2f}x",
         "<= 1.5x"),
        ("peak RSS of a worker (MiB)", f"{max(rss) / 1024:.0f}" if rss else "-", "< 1024"),
    ]
    print(f"\nFeatures speed, {n} generated MP3s, median of {args.repeats} pairs; "
          f"{machine()}; {datetime.date.today().isoformat()}\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    for name, value, target in table:
        print(f"| {name} | {value} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
