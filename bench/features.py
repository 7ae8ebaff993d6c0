"""Features speed: our shard task against the reference recipe, on the same MP3s, in one run.

The clips are what FMA mostly holds: 30 s, 44.1 kHz stereo, 320 kbit/s, synthesized in the 16
genre styles of ``preprocess.synth.audio``, in two groups: loud masters (hard-clipped 12 dB over
full scale, decoded peaks above 1.0) and quiet ones (peak -1 .. -7 dBFS, as synthesized).

* reference: per track ``librosa.load(sr=None, mono, 29.5 s)`` (libsndfile + mpg123),
  ``librosa.feature.melspectrogram`` + ``power_to_db``, one pickle file per track (the
  reference project's cache);
* ours: ``preprocess.driver.compute_shard`` (decode the first 29.5 s with the same reader,
  the image with the cached sparse filterbank, the HDF5 shard written atomically and read
  back); and its two parts per track: ``decode`` (``preprocess.audio.decode``, 29.5 s) and
  ``image`` (``preprocess.audio.image_of`` on the decoded samples: down-mix, STFT, mel, dB);
* ours with the fine image too (``--recipes reference,fine``: the second image from the same
  decoded samples, stored as ``mel_fine``), against ours without it.

For 1 job (in this process, BLAS limited to one thread as in a pool worker), per group, timed in
CPU seconds of this process (on a shared machine other jobs inflate wall time far more than the
CPU time of a single-threaded job), and for all cores (a joblib process pool over both groups, one
task per worker for both sides, wall time), passes alternate reference / ours; each figure is the
median of ``--repeats`` pairs. Prints a markdown
table with the machine and date and the targets:

  ours >= 2.0x the reference per core, on loud and on quiet clips;
  ours with the fine image costs about a third more than without (not twice: one decode);
  ours on 2 jobs >= 1.6x ours on 1 job.

Usage: python bench/features.py [--tracks 24] [--repeats 3] [--jobs N] [--dir DIR]
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
from preprocess.audio_source import AudioSource  # noqa: E402
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


def make_clips(audio_dir: Path, n: int, level: str, first_id: int) -> list[tuple[int, int]]:
    """Write ``n`` 30 s 44.1 kHz stereo 320 kbit/s MP3s (FMA layout); return (track_id, label)."""
    from preprocess.fma import TOP_GENRES
    from preprocess.synth.audio import STYLES, Master, apply_master, encode_mp3, synthesize

    genres = sorted(TOP_GENRES.values())
    master = Master(level="loud", drive_db=12.0) if level == "loud" else Master()
    tracks = []
    for k in range(n):
        track_id = first_id + k
        genre = genres[k % len(genres)]
        rng = np.random.default_rng([7, track_id])
        samples = apply_master(synthesize([STYLES[genre]], rng, 44100, 30.0, 2), 44100, master)
        path = audio_dir / fma.audio_relpath(track_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_mp3(samples, 44100, 320, vbr=False))
        tracks.append((track_id, fma.CLASS_NAMES.index(genre)))
    return tracks


def busy_work(rounds: int = 40) -> int:
    """A fixed CPU-bound job (FFTs) to measure how many cores are really free right now."""
    import scipy.fft

    x = np.random.default_rng(0).standard_normal((32, 20328)).astype(np.float32)
    for _ in range(rounds):
        scipy.fft.rfft(x, axis=-1)
    return rounds


def _tasks(
    tracks: list[tuple[int, int]], audio_dir: Path, out: Path, n_parts: int, fine: bool = False
) -> list[dict]:
    tasks = []
    for k in range(n_parts):
        part = tracks[k * len(tracks) // n_parts : (k + 1) * len(tracks) // n_parts]
        spec = ShardSpec(
            name=f"train-{k:05d}-of-{n_parts:05d}.h5",
            split="train",
            shard_index=k,
            num_shards=n_parts,
            track_ids=tuple(t for t, _ in part),
            labels=tuple(label for _, label in part),
        )
        tasks.append(
            {
                "spec": spec.to_dict(),
                "audio": AudioSource(str(audio_dir)).to_dict(),
                "out": str(out),
                "recipe": RECIPES["reference"].to_dict(),
                "fine_recipe": RECIPES["fine"].to_dict() if fine else None,
                "subset": "large",
                "class_names": list(fma.CLASS_NAMES),
                "timeout_s": 120.0,
                "compression": None,
            }
        )
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=24, help="clips per group (loud, quiet)")
    parser.add_argument("--repeats", type=int, default=3, help="reference/ours pairs per setting")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="workers for 'all cores'")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)

    from preprocess.audio import decode, image_of

    recipe = RECIPES["reference"]
    groups = ("loud", "quiet")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        audio_dir = root / "audio"
        print(f"generating {len(groups)} x {args.tracks} clips ...", file=sys.stderr)
        tracks = {g: make_clips(audio_dir, args.tracks, g, 1000 * (i + 1)) for i, g in enumerate(groups)}
        paths = {g: [str(audio_dir / fma.audio_relpath(t)) for t, _ in tracks[g]] for g in groups}
        every_track = [t for g in groups for t in tracks[g]]
        every_path = [p for g in groups for p in paths[g]]
        n_all = len(every_path)
        pickles, shards = root / "pickles", root / "shards"
        pickles.mkdir()
        shards.mkdir()

        controller = ThreadpoolController()
        rss: list[int] = []

        def timed(fn, clock=time.perf_counter) -> float:
            _clear(pickles)
            _clear(shards)
            start = clock()
            fn()
            return clock() - start

        def cpu(fn) -> float:
            """CPU seconds of this process (1-job runs): what other jobs on a shared machine disturb least."""
            return timed(fn, time.process_time)

        def ref_1(group):
            with controller.limit(limits=1):  # one core, as in a pool worker
                for p in paths[group]:
                    reference_track(p, str(pickles))

        def ours_1(group, fine=False):
            with controller.limit(limits=1):
                compute_shard(_tasks(tracks[group], audio_dir, shards, 1, fine)[0])

        def decode_1(group):
            return [decode(p, max_seconds=recipe.duration_s) for p in paths[group]]

        def parts_1(group) -> tuple[float, float, float]:
            """CPU seconds of decoding, of the image, and of the image with the fine one, track by
            track (one waveform held at a time)."""
            spent = [0.0, 0.0, 0.0]
            with controller.limit(limits=1):
                for p in paths[group]:
                    t0 = time.process_time()
                    waveform, rate = decode(p, max_seconds=recipe.duration_s)
                    t1 = time.process_time()
                    image_of(waveform, rate, recipe)
                    t2 = time.process_time()
                    image_of(waveform, rate, recipe, fine=RECIPES["fine"])
                    spent[0] += t1 - t0
                    spent[1] += t2 - t1
                    spent[2] += time.process_time() - t2
            return spent[0], spent[1], spent[2]

        peaks = {g: max(float(np.abs(w).max()) for w, _ in decode_1(g)) for g in groups}
        with joblib.Parallel(n_jobs=args.jobs) as pool:

            def ref_n():
                chunks = [
                    every_path[k * n_all // args.jobs : (k + 1) * n_all // args.jobs]
                    for k in range(args.jobs)
                ]
                pool(joblib.delayed(reference_chunk)(c, str(pickles)) for c in chunks)

            def ours_n():
                tasks = _tasks(every_track, audio_dir, shards, args.jobs)
                rss.extend(pool(joblib.delayed(ours_chunk)(t) for t in tasks))

            def ours_1_all():
                with controller.limit(limits=1):
                    compute_shard(_tasks(every_track, audio_dir, shards, 1)[0])

            # Warm up: imports and caches in this process and every worker.
            for g in groups:
                ref_1(g)
                ours_1(g)
            ref_n()
            ours_n()
            rows = []
            for _ in range(args.repeats):
                row = {}
                for g in groups:
                    row[f"ref_1 {g}"] = cpu(lambda g=g: ref_1(g))
                    row[f"ours_1 {g}"] = cpu(lambda g=g: ours_1(g))
                    row[f"fine_1 {g}"] = cpu(lambda g=g: ours_1(g, fine=True))
                    row[f"decode {g}"], row[f"image {g}"], row[f"both {g}"] = parts_1(g)
                row["ref_n"] = timed(ref_n)
                row["ours_n"] = timed(ours_n)
                row["ours_1 all"] = timed(ours_1_all)  # wall time, as the pool's
                # The same fixed job, once per worker, one after the other and then in the pool:
                # the speed-up any work could get from the pool on this machine right now.
                row["busy_1"] = timed(lambda: [busy_work() for _ in range(args.jobs)])
                row["busy_n"] = timed(lambda: pool(joblib.delayed(busy_work)() for _ in range(args.jobs)))
                rows.append(row)

    def med(f) -> float:
        return statistics.median(f(r) for r in rows)

    n, jobs = args.tracks, args.jobs
    table = []
    for g in groups:
        ms = {
            k: med(lambda r, k=k, g=g: r[f"{k} {g}"]) / n * 1e3
            for k in ("ref_1", "ours_1", "fine_1", "decode", "image", "both")
        }
        ratio = med(lambda r, g=g: r[f"ref_1 {g}"] / r[f"ours_1 {g}"])
        fine_ratio = med(lambda r, g=g: r[f"fine_1 {g}"] / r[f"ours_1 {g}"])
        table += [
            (
                f"{g} clips (decoded peak {peaks[g]:.2f}): reference, 1 job (CPU ms/track)",
                f"{ms['ref_1']:.1f}",
                "",
            ),
            (
                f"{g}: ours, 1 job (CPU ms/track: decode, image, shard write + read-back)",
                f"{ms['ours_1']:.1f}",
                "",
            ),
            (f"{g}: ours decode / image (CPU ms/track)", f"{ms['decode']:.1f} / {ms['image']:.1f}", ""),
            (f"{g}: ours / reference, 1 job", f"{ratio:.2f}x", ">= 2.0x"),
            (
                f"{g}: ours with the fine image too, 1 job (CPU ms/track; image + fine image)",
                f"{ms['fine_1']:.1f} ({ms['both']:.1f})",
                "",
            ),
            (f"{g}: with the fine image / without, 1 job", f"{fine_ratio:.2f}x", "about 1.33x, not 2x"),
        ]
    table += [
        (f"reference, {jobs} jobs (tracks/s)", f"{n_all / med(lambda r: r['ref_n']):.1f}", ""),
        (f"ours, {jobs} jobs (tracks/s)", f"{n_all / med(lambda r: r['ours_n']):.1f}", ""),
        (f"ours / reference, {jobs} jobs", f"{med(lambda r: r['ref_n'] / r['ours_n']):.2f}x", ""),
        (
            f"ours {jobs} jobs / ours 1 job",
            f"{med(lambda r: r['ours_1 all'] / r['ours_n']):.2f}x",
            ">= 1.6x" if jobs == 2 else "",
        ),
        (
            f"a fixed CPU job, {jobs} jobs / 1 job (cores free right now)",
            f"{med(lambda r: r['busy_1'] / r['busy_n']):.2f}x",
            "",
        ),
        ("peak RSS of a worker (MiB)", f"{max(rss) / 1024:.0f}" if rss else "-", "< 1024"),
    ]
    print(
        f"\nFeatures speed, {n} + {n} generated 30 s 44.1 kHz stereo 320 kbit/s MP3s, median of "
        f"{args.repeats} pairs; {machine()}; {datetime.date.today().isoformat()}\n"
    )
    print("| measure | value | target |")
    print("|---|---|---|")
    for name, value, target in table:
        print(f"| {name} | {value} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
