"""A full-size rehearsal of the features stage: an fma_large-sized tree, all cores, faults on the way.

Not in CI and not in `make bench`: it takes tens of minutes on 2 cores. Run it once on a
machine to get the figures README.md and docs/benchmarks.md quote:

    python bench/scale.py --dir /scratch/scale          # outside the repository; ~1 GB of disk

1. **The tree** (built once under DIR/fma, reused by later runs): ``fma_metadata/tracks.csv``
   with 106,574 rows like fma_large's (52 columns, as ``preprocess.synth`` writes them),
   49,598 of them with a top-level genre (every small and medium row, 24,598 large ones),
   FMA's split sizes (84,353 / 10,958 / 11,263) and subsets (8,000 small, 17,000 medium), ids
   spread over FMA's range (so some are FMA's known-bad ids, skipped as on the real data),
   listed durations of whole songs (a few of 29 s or less, skipped); ``fma_large/NNN/NNNNNN.mp3``
   for every row, each a hard link to one of a pool of generated MP3s (``--pool`` tracks made by
   ``preprocess.synth``, the good ones kept: 30 s clips, mostly 44.1 kHz stereo 320 kbit/s), so
   the tree costs the pool's disk only.
2. **The features stage** (``python -m preprocess features``, ``--jobs`` all cores, a fresh
   DIR/shards): one track fails by SIGSEGV in its decoder and one hangs with SIGALRM blocked (the
   test-only hook ``FMA_GENRE_TEST_FAULTS``; ``--track-timeout``), and when a third of the tracks
   are written one worker process is sent SIGKILL. Sampled every half second: the tracks in
   complete shards, the CPU time of the command and all its processes, every process's peak RSS.
3. ``finalize`` and ``verify``, timed; the shard count and total size.
4. One training epoch of the seed CNN on the CPU (``python -m train fit --epochs 1``): samples/s.

It prints the figures as a markdown table (and writes them to DIR/scale_report.json): tracks/s
and CPU-ms per track over the first and the last tenth of the tracks, peak RSS per process,
seconds for planning (start to plan.json), the features run, finalize and verify, the shard
count and size, what became of the faults, and the epoch's samples/s.

Usage: python bench/scale.py --dir DIR [--pool 320] [--jobs N] [--track-timeout 60] [--no-epoch]
                             [--train-threads N] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.unpack import cpu_model  # noqa: E402
from preprocess import fma  # noqa: E402
from preprocess.supervise import FAULTS_ENV  # noqa: E402

ROWS = 106_574
WITH_GENRE = 49_598
SPLITS = {"training": 84_353, "validation": 10_958, "test": 11_263}
SMALL, MEDIUM = 8_000, 17_000
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- the tree


def sizes(scale: float) -> dict:
    """Rows, rows with a genre, split sizes and subset sizes, fma_large's times ``scale``."""
    return {
        "rows": round(ROWS * scale),
        "with_genre": round(WITH_GENRE * scale),
        "splits": {k: round(v * scale) for k, v in SPLITS.items()},
        "small": round(SMALL * scale),
        "medium": round(MEDIUM * scale),
    }


def build_tree(root: Path, pool_size: int, seed: int, scale: float = 1.0) -> dict:
    """tracks.csv of fma_large's size (times ``scale``) and a tree of hard links to a pool of
    generated MP3s."""
    from preprocess.synth.generator import FMA_MEDIUM_COUNTS, generate
    from preprocess.synth.meta import (
        TOP_ID,
        genre_ancestors,
        genres_frame,
        genres_under,
        track_row,
        tracks_frame,
    )
    from shards import atomic_path

    stamp = root / "scale-tree.json"
    size = sizes(scale)
    rows_n = sum(size["splits"].values())
    wanted = {**size, "pool": pool_size, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return {"reused": True}
    began = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    pool_dir = root / "pool"
    truth = generate(pool_dir, n_tracks=pool_size, seed=seed)
    pool = sorted(pool_dir / t["path"] for t in truth["tracks"].values() if t["kind"] == "good")
    rng = np.random.default_rng([seed, 106574])
    ids = np.sort(rng.choice(np.arange(2, 156_000), rows_n, replace=False))
    order = rng.permutation(rows_n)  # who gets which role
    split = np.empty(rows_n, object)
    cuts = np.cumsum(list(size["splits"].values()))
    for name, lo, hi in zip(size["splits"], [0, *cuts[:-1]], cuts, strict=True):
        split[order[lo:hi]] = name
    order = rng.permutation(rows_n)
    small, medium = size["small"], size["medium"]
    subset = np.full(rows_n, "large", object)
    subset[order[:small]] = "small"
    subset[order[small : small + medium]] = "medium"
    has_genre = np.zeros(rows_n, bool)
    has_genre[order[: size["with_genre"]]] = True  # every small and medium row, then large ones
    names = list(FMA_MEDIUM_COUNTS)
    weights = np.array(list(FMA_MEDIUM_COUNTS.values()), float)
    tops = rng.choice(names, rows_n, p=weights / weights.sum())
    durations = np.clip(rng.lognormal(np.log(230), 0.5, rows_n), 20, 3600).astype(int)
    rows, genres_all_list = {}, []
    audio = root / "fma" / "fma_large"
    for i, tid in enumerate(ids.tolist()):
        top = str(tops[i]) if has_genre[i] else None
        if top is not None:
            genres = [int(rng.choice(genres_under(TOP_ID[top])))]
        else:
            a, b = rng.choice(names, 2, replace=False)
            genres = [
                int(rng.choice(genres_under(TOP_ID[str(a)]))),
                int(rng.choice(genres_under(TOP_ID[str(b)]))),
            ]
        genres_all = sorted({g for genre in genres for g in genre_ancestors(genre)})
        genres_all_list.append(genres_all)
        rows[tid] = track_row(
            np.random.default_rng([seed, tid]),
            track_id=tid,
            artist_id=int(tid // 7),
            album_id=int(tid // 3),
            title=f"track {tid}",
            artist=f"artist {tid // 7}",
            album=f"album {tid // 3}",
            split=str(split[i]),
            subset=str(subset[i]),
            genre_top=top,
            genres=genres,
            genres_all=genres_all,
            bit_rate=320000,
            duration=int(durations[i]),
            number=1,
        )
        path = audio / fma.audio_relpath(tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(pool[tid % len(pool)], path)
    meta = root / "fma" / "fma_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    with atomic_path(meta / "tracks.csv") as tmp:
        tracks_frame(rows).to_csv(tmp)
    with atomic_path(meta / "genres.csv") as tmp:
        genres_frame(genres_all_list).to_csv(tmp)
    stamp.write_text(json.dumps(wanted))
    return {
        "reused": False,
        "seconds": time.perf_counter() - began,
        "pool_files": len(pool),
        "pool_mib": sum(p.stat().st_size for p in pool) / 2**20,
        "tracks_csv_mib": (meta / "tracks.csv").stat().st_size / 2**20,
    }


# --------------------------------------------------------------------------- watching the run


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _tree(root: int) -> list[int]:
    """``root`` and its live descendants."""
    parents = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children it has reaped."""
    fields = _stat(pid)
    return 0.0 if fields is None else sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def _hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


def _is_worker(pid: int) -> bool:
    try:
        return b"preprocess.supervise" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def pick_faults(plan: dict) -> dict[int, str]:
    """A track to crash (40 % into the shard list) and one to hang (60 %): each its shard's second track."""
    specs = plan["shards"]
    crash = specs[int(0.4 * len(specs))]["track_ids"][1]
    hang = specs[int(0.6 * len(specs))]["track_ids"][1]
    return {int(crash): "segv", int(hang): "hang"}


def run_features(fma_dir: Path, out: Path, jobs: int, timeout: float, faults: dict[int, str]) -> dict:
    """The features command, watched: a timeline of (seconds, tracks written, CPU seconds) and peaks."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), FAULTS_ENV: ",".join(f"{t}:{m}" for t, m in faults.items())}
    cmd = [
        sys.executable,
        "-m",
        "preprocess",
        "features",
        "--fma-dir",
        str(fma_dir),
        "--subset",
        "large",
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--track-timeout",
        f"{timeout:g}",
        "--no-finalize",
        "--no-progress",
    ]
    log = out.with_name("features.log")
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=fh)
    sizes: dict[str, int] = {}
    timeline, peaks, plan_s, killed = [], {}, None, None
    decoding_from = None
    total = None
    while proc.poll() is None:
        now = time.monotonic() - began
        if plan_s is None and (out / "plan.json").exists():
            plan_s = now
            plan = json.loads((out / "plan.json").read_text())
            sizes = {s["name"]: len(s["track_ids"]) for s in plan["shards"]}
            total = sum(sizes.values())
        pids = _tree(proc.pid)
        cpu = sum(_cpu_s(p) for p in pids)
        # The command's worker processes (their forked children, isolating tracks, are not counted).
        workers = [p for p in pids if _is_worker(p) and _parent(p) == proc.pid]
        if workers and decoding_from is None:
            decoding_from = now
        for pid in pids:
            hwm = _hwm_mib(pid)
            if hwm is not None:
                kind = "worker" if pid in workers else ("command" if pid == proc.pid else "isolated")
                peaks[pid] = (kind, max(hwm, peaks.get(pid, (kind, 0.0))[1]))
        done = sum(n for name, n in sizes.items() if (out / name).exists()) if sizes else 0
        timeline.append((now, done, cpu))
        if total and killed is None and done >= total / 3 and workers:
            victim = max(workers)
            os.kill(victim, signal.SIGKILL)
            killed = {"pid": victim, "at_s": now, "tracks_written": done}
        time.sleep(0.5)
    wall = time.monotonic() - began
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_total = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    timeline.append((wall, total or 0, max(cpu_total, timeline[-1][2] if timeline else 0.0)))
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"features failed (exit {proc.returncode}); see {log}:\n{text[-3000:]}")
    return {
        "wall_s": wall,
        "cpu_s": cpu_total,
        "plan_s": plan_s,
        "decoding_from_s": decoding_from,
        "timeline": timeline,
        "peaks": peaks,
        "killed": killed,
        "total": total,
        "warnings": [line for line in text.splitlines() if line.startswith("warning:")],
    }


def tenth(timeline: list[tuple], total: int, first: bool, start_s: float) -> dict:
    """tracks/s and CPU-ms per track over the first or the last tenth of the tracks (at least a tenth:
    shards are written whole, so the bounds are the samples around 10 % and 90 %)."""
    if first:
        a = max((p for p in timeline if p[0] <= start_s), default=timeline[0], key=lambda p: p[0])
        b = next(p for p in timeline if p[1] >= total / 10)
    else:  # from the last sample before 90 % of the tracks were written, to the end
        a = [p for p in timeline if p[1] < 0.9 * total][-1]
        b = timeline[-1]
    tracks = b[1] - a[1]
    seconds = b[0] - a[0]
    return {
        "tracks": tracks,
        "seconds": seconds,
        "tracks_per_s": tracks / seconds,
        "cpu_ms_per_track": 1000 * (b[2] - a[2]) / tracks,
    }


def timed(cmd: list[str], log: Path, env: dict | None = None) -> float:
    began = time.perf_counter()
    with open(log, "wb") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {done.returncode}); see {log}")
    return seconds


# --------------------------------------------------------------------------- the report


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", required=True, help="working folder (the tree, the shards, a run); ~1 GB")
    parser.add_argument("--pool", type=int, default=320, help="generated MP3s behind the hard links")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="features workers (all cores)")
    parser.add_argument("--track-timeout", type=float, default=60.0, help="the features --track-timeout")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false", help="skip the training epoch")
    parser.add_argument(
        "--train-threads", type=int, default=None, help="the epoch's --threads (default: train fit's default)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale", type=float, default=1.0, help="fma_large's row counts times this (a quick smoke run: 0.02)"
    )
    args = parser.parse_args()
    root = Path(args.dir).resolve()
    if REPO in root.parents or root == REPO:
        raise SystemExit(f"--dir {root}: put it outside the repository")
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    report: dict = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_before": os.getloadavg(),
        "jobs": args.jobs,
        "track_timeout_s": args.track_timeout,
    }
    report["tree"] = build_tree(root / "tree", args.pool, args.seed, args.scale)
    fma_dir, out = root / "tree" / "fma", root / "shards"

    from preprocess.options import FeatureOptions
    from preprocess.plan import build_plan

    plan = build_plan(FeatureOptions(fma_dir, out, subset="large"))
    faults = pick_faults({"shards": [s.to_dict() for s in plan.specs]})
    report["selection"] = {
        "rows": sum(sizes(args.scale)["splits"].values()),
        "with_genre": sizes(args.scale)["with_genre"],
        "tracks": plan.selection.num_tracks(),
        "skipped": {k: len(v) for k, v in plan.selection.skipped.items()},
        "shards": len(plan.specs),
    }
    report["faults"] = {str(t): m for t, m in faults.items()}
    run = run_features(fma_dir, out, args.jobs, args.track_timeout, faults)
    start = run["decoding_from_s"] or run["plan_s"] or 0.0
    report["features"] = {
        "wall_s": run["wall_s"],
        "cpu_s": run["cpu_s"],
        "plan_s": run["plan_s"],
        "first_tenth": tenth(run["timeline"], run["total"], True, start),
        "last_tenth": tenth(run["timeline"], run["total"], False, start),
        "killed_worker": run["killed"],
        "peak_rss_mib": {
            "command": max((v for k, v in run["peaks"].values() if k == "command"), default=None),
            "workers_max": max((v for k, v in run["peaks"].values() if k == "worker"), default=None),
            "workers_median": float(np.median([v for k, v in run["peaks"].values() if k == "worker"] or [0])),
            "workers_seen": sum(k == "worker" for k, _ in run["peaks"].values()),
        },
    }
    report["finalize_s"] = timed(
        [sys.executable, "-m", "preprocess", "finalize", str(out)], root / "finalize.log", env
    )
    report["verify_s"] = timed(
        [sys.executable, "-m", "preprocess", "verify", str(out)], root / "verify.log", env
    )
    manifest = json.loads((out / "manifest.json").read_text())
    names = [e["name"] for e in manifest["shards"]]
    report["shards"] = {
        "count": len(names),
        "gib": sum((out / n).stat().st_size for n in names) / 2**30,
        "tracks_written": sum(e["num_tracks"] for e in manifest["shards"]),
        "failed": len(manifest["failed"]),
        "fault_reasons": {
            str(f["track_id"]): f["reason"]
            for f in manifest["failed"]
            if str(f["track_id"]) in report["faults"]
        },
    }
    if args.epoch:
        run_dir = root / "run"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "train", "fit", "--shards", str(out), "--run", str(run_dir)]
        cmd += ["--epochs", "1", "--device", "cpu"]
        if args.train_threads:
            cmd += ["--threads", str(args.train_threads)]
        report["train_threads"] = args.train_threads or "default"
        report["epoch_s"] = timed(cmd, root / "fit.log", env)
        history = json.loads((run_dir / "history.json").read_text())
        report["epoch_samples_per_s"] = history[-1]["samples_per_s"]
    report["load_after"] = os.getloadavg()
    (root / "scale_report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    report["warnings"] = run["warnings"]
    print_report(report)
    return 0


def print_report(r: dict) -> None:
    f = r["features"]
    first, last = f["first_tenth"], f["last_tenth"]
    rss = f["peak_rss_mib"]
    sel = r["selection"]
    print(
        f"bench/scale.py, {r['date']}, {r['machine']}; load average {r['load_before'][0]:.1f} before, "
        f"{r['load_after'][0]:.1f} after; --jobs {r['jobs']}, --track-timeout {r['track_timeout_s']:g}\n"
    )
    rows = [
        ("tracks.csv rows / with a top genre", f"{sel['rows']:,} / {sel['with_genre']:,}"),
        ("selected tracks (skipped by reason)", f"{sel['tracks']:,} ({sel['skipped']})"),
        ("planning: start to plan.json (s)", f"{f['plan_s']:.1f}"),
        ("features run, wall (s) / CPU of all its processes (s)", f"{f['wall_s']:.0f} / {f['cpu_s']:.0f}"),
        (
            "first tenth: tracks/s, CPU-ms per track",
            f"{first['tracks_per_s']:.1f}, {first['cpu_ms_per_track']:.1f}",
        ),
        (
            "last tenth: tracks/s, CPU-ms per track",
            f"{last['tracks_per_s']:.1f}, {last['cpu_ms_per_track']:.1f}",
        ),
        (
            f"peak RSS: the command / a worker (max, median of {rss['workers_seen']}) (MiB)",
            f"{rss['command']:.0f} / {rss['workers_max']:.0f}, {rss['workers_median']:.0f}",
        ),
        ("worker killed (SIGKILL) at", f"{f['killed_worker']}"),
        ("injected faults -> recorded reasons", f"{r['shards']['fault_reasons']}"),
        ("finalize (s) / verify (s)", f"{r['finalize_s']:.1f} / {r['verify_s']:.1f}"),
        ("shards / total size (GiB)", f"{r['shards']['count']} / {r['shards']['gib']:.2f}"),
        ("tracks written / failed", f"{r['shards']['tracks_written']:,} / {r['shards']['failed']}"),
    ]
    if "epoch_samples_per_s" in r:
        rows.append(
            (
                f"one training epoch, seed CNN on CPU, --threads {r['train_threads']}: samples/s (epoch s)",
                f"{r['epoch_samples_per_s']:.0f} ({r['epoch_s']:.0f})",
            )
        )
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nwarnings in the features log:")
    for line in r["warnings"]:
        print("  " + line)


if __name__ == "__main__":
    raise SystemExit(main())
