"""Decode every selected FMA track once into 128x128 log-mel images in HDF5 shards.

    python -m preprocess features --fma-dir data --subset large --out shards/fma_large --jobs 8

Reads FMA_DIR/fma_metadata/tracks.csv, selects the subset's tracks with a top
genre (skipping FMA's known-bad ids and tracks whose listed duration is <= 29 s),
cuts each split into shards of --shard-size tracks and computes every shard as
one task of a process pool (or of a dask cluster: --backend dask --scheduler
tcp://host:port | scheduler-file). Each shard is written to a temporary file and
renamed into place, so a reader never sees a partial shard.

Outputs in --out: plan.json (written first: recipe, every shard's tracks, skipped
tracks by reason), the shards (train-00000-of-00150.h5 ...) and, once every
shard exists, manifest.json.

Rerunning is safe and cheap: complete shards made with the same recipe are
skipped (a finished run does no decoding and rewrites nothing); a killed run
resumes where it stopped. A different recipe or selection into the same --out
is refused unless --force. --shard-index I --num-shards N computes only shards
k with k % N == I (SLURM array tasks); finalize then writes the manifest.

Per-track problems (missing, empty, undecodable, too short, hung) never stop
the run: they are recorded in the shard with their reason and summarized at
the end. A run where most tracks fail stops early with an error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from collections import Counter
from pathlib import Path

from preprocess import fma
from preprocess.assign import DEFAULT_SHARD_SIZE, ShardSpec, assign_shards, select_for_task
from preprocess.metadata import DEFAULT_MIN_DURATION, MetadataError, load_selection, tracks_csv_path
from preprocess.recipe import RECIPES, Recipe
from shards import ShardError

PLAN_NAME = "plan.json"
PLAN_VERSION = 1
DEFAULT_TRACK_TIMEOUT = 120.0
# Stop early when, after at least this many tracks, more than max_failure_fraction failed.
EARLY_STOP_MIN_TRACKS = 20


class FeaturesError(RuntimeError):
    """The run cannot go on (missing dataset, conflicting output, most tracks failing)."""


# --------------------------------------------------------------------------- the shard task

def software_versions() -> dict:
    """Versions stored with every shard (provenance)."""
    import h5py
    import librosa
    import numpy
    import scipy
    import soundfile
    import soxr

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "librosa": librosa.__version__, "soundfile": soundfile.__version__,
            "libsndfile": soundfile.__libsndfile_version__, "soxr": soxr.__version__,
            "h5py": h5py.__version__}


def compute_shard(task: dict) -> dict:
    """Decode one shard's tracks and write the shard file (atomically). A joblib/dask task.

    Importable by module name (``preprocess.driver.compute_shard``) so that
    dask workers can run it.

    Parameters
    ----------
    task : dict
        ``spec`` (ShardSpec.to_dict()), ``audio_dir``, ``out``, ``recipe``
        (Recipe.to_dict()), ``subset``, ``class_names``, ``timeout_s``, ``compression``.

    Returns
    -------
    dict
        ``name``, ``written`` (tracks), ``failed`` [(track_id, reason)], ``checksum``,
        ``seconds``, ``pid``, ``host``.
    """
    import numpy as np

    from preprocess.audio import TrackFailure, track_image
    from shards import write_shard

    start = time.perf_counter()
    spec = ShardSpec.from_dict(task["spec"])
    recipe = Recipe.from_dict(task["recipe"])
    audio_dir = Path(task["audio_dir"])
    out = Path(task["out"])
    images = np.empty((len(spec.track_ids), recipe.n_mels, recipe.n_frames), dtype=np.float32)
    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    for i, track_id in enumerate(spec.track_ids):
        try:
            path = audio_dir / fma.audio_relpath(track_id)
            images[len(kept)] = track_image(path, recipe, task["timeout_s"]).image
            kept.append(i)
        except TrackFailure as exc:
            failed.append((track_id, str(exc)))
        except Exception as exc:  # an unexpected error in one track must not stop the run
            failed.append((track_id, f"error: {type(exc).__name__}: {exc}"))
    # A killed earlier attempt at this shard may have left its temporary file.
    for stale in out.glob(f".{spec.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    checksum = write_shard(
        out / spec.name,
        mel=images[: len(kept)],
        label=np.asarray([spec.labels[i] for i in kept], dtype=np.int64),
        track_id=np.asarray([spec.track_ids[i] for i in kept], dtype=np.int64),
        split=spec.split, shard_index=spec.shard_index, num_shards=spec.num_shards,
        subset=task["subset"], recipe=task["recipe"], class_names=task["class_names"],
        versions=software_versions(), failed=failed, compression=task["compression"],
    )
    return {"name": spec.name, "written": len(kept), "failed": failed, "checksum": checksum,
            "seconds": time.perf_counter() - start, "pid": os.getpid(), "host": socket.gethostname()}


# --------------------------------------------------------------------------- plan and state on disk

def make_plan(selection, specs: list[ShardSpec], *, recipe: Recipe, subset: str, shard_size: int,
              skip_known_bad: bool, min_duration: float | None) -> dict:
    """plan.json's content: plain data, deterministic for the same inputs."""
    return {
        "plan_version": PLAN_VERSION,
        "subset": subset,
        "recipe": recipe.to_dict(),
        "class_names": list(fma.CLASS_NAMES),
        "shard_size": shard_size,
        "selection": {"skip_known_bad": skip_known_bad, "min_duration": min_duration},
        "shards": [s.to_dict() for s in specs],
        "skipped": selection.skipped,
    }


def read_plan(out: Path) -> dict | None:
    """The plan in ``out``, None if there is none; FeaturesError if unreadable."""
    path = out / PLAN_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeaturesError(f"{path}: unreadable plan ({exc}). Delete it and rerun, or use --force.") from exc


def plan_differences(old: dict, new: dict) -> list[str]:
    """Human-readable keys in which two plans differ."""
    diffs = []
    for key in ("subset", "class_names", "shard_size", "selection"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if old.get("recipe") != new.get("recipe"):
        a, b = old.get("recipe") or {}, new.get("recipe") or {}
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        diffs.append("recipe: " + ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed))
    if not diffs and old.get("shards") != new.get("shards"):
        diffs.append("shard assignment (tracks.csv changed?)")
    return diffs


def complete_shard(path: Path, spec: ShardSpec, recipe: dict):
    """The shard's contents if ``path`` is a readable shard of ``spec``'s tracks made with
    ``recipe``, else None.

    Cheap: reads attributes and ids, not the images (the checksum was verified
    when the shard was written; ``verify`` re-checks the data).
    """
    from shards import ShardError, read_shard

    if not path.exists():
        return None
    try:
        contents = read_shard(path)
    except ShardError:
        return None
    done = set(contents.track_id.tolist()) | {t for t, _ in contents.failed}
    complete = contents.recipe == recipe and done == set(spec.track_ids) and len(done) == len(spec.track_ids)
    return contents if complete else None


def shard_is_complete(path: Path, spec: ShardSpec, recipe: dict) -> bool:
    """True if ``path`` is a readable shard of ``spec``'s tracks made with ``recipe``."""
    return complete_shard(path, spec, recipe) is not None


# --------------------------------------------------------------------------- the run

def check_dataset(fma_dir: Path, subset: str) -> Path:
    """The subset's audio folder; FeaturesError naming where it looked if the dataset is absent."""
    csv = tracks_csv_path(fma_dir)
    if not csv.is_file():
        raise FeaturesError(
            f"no dataset at FMA_DIR={fma_dir}: looked for {csv} (and {fma_dir}/fma_{subset}/). "
            f"Run `make download FMA_DIR={fma_dir} SUBSET={subset}` for the real FMA, or `make demo` "
            f"for a generated mini-FMA (or pass --fma-dir where fma_metadata/ lives)."
        )
    audio = fma.audio_dir(fma_dir, subset)
    if not audio.is_dir():
        raise FeaturesError(
            f"{csv} exists but no audio folder: looked for {audio} (or a larger subset's folder). "
            f"Unpack fma_{subset}.zip into {fma_dir} (`make download SUBSET={subset}`)."
        )
    return audio


def build_plan(fma_dir: str | os.PathLike, subset: str, *, recipe: Recipe, shard_size: int,
               skip_known_bad: bool, min_duration: float | None):
    """Select the tracks and cut them into shards: a pure function of tracks.csv and the options.

    Every process (a local run, an array task, the SLURM submitter) computes the same plan.

    Returns
    -------
    (Path, Selection, list[ShardSpec], dict)
        The audio folder, the selection, the shard specs and the plan (as written to plan.json).
    """
    fma_dir = Path(fma_dir)
    audio = check_dataset(fma_dir, subset)
    selection = load_selection(fma_dir, subset, skip_known_bad=skip_known_bad, min_duration=min_duration)
    specs = assign_shards(selection.tracks, shard_size)
    if not specs:
        raise FeaturesError(f"no track of subset {subset!r} in {tracks_csv_path(fma_dir)} survives the "
                            f"selection (skipped: { {k: len(v) for k, v in selection.skipped.items()} })")
    plan = make_plan(selection, specs, recipe=recipe, subset=subset, shard_size=shard_size,
                     skip_known_bad=skip_known_bad, min_duration=min_duration)
    return audio, selection, specs, plan


def _spot_check_files(audio: Path, specs: list[ShardSpec], max_failure_fraction: float) -> None:
    """Fail fast when most sampled tracks have no file (e.g. the wrong FMA_DIR or SUBSET)."""
    ids = [t for s in specs for t in s.track_ids]
    if not ids:
        return
    sample = ids[:: max(1, len(ids) // 50)][:50]
    missing = [t for t in sample if not (audio / fma.audio_relpath(t)).is_file()]
    if len(sample) >= 4 and len(missing) / len(sample) > max_failure_fraction:
        raise FeaturesError(
            f"{len(missing)} of {len(sample)} sampled tracks have no file under {audio} "
            f"(e.g. {audio / fma.audio_relpath(missing[0])}). Is --fma-dir / --subset right? "
            f"Unpack the audio zip there (`make download`)."
        )


def _open_backend(backend: str, scheduler: str | None):
    """A context manager configuring joblib for ``backend``; the dask client if any."""
    import contextlib

    import joblib

    if backend == "local":
        return contextlib.nullcontext(), None
    if backend != "dask":
        raise FeaturesError(f"--backend must be local or dask, got {backend!r}")
    if not scheduler:
        raise FeaturesError("--backend dask needs --scheduler tcp://host:port or a scheduler-file path")
    try:
        from distributed import Client
    except ImportError as exc:
        raise FeaturesError("--backend dask needs the 'distributed' package (pip install '.[cluster]')"
                            ) from exc
    if "://" not in scheduler and not Path(scheduler).is_file():
        raise FeaturesError(f"--scheduler {scheduler!r} is neither an address (tcp://host:port) "
                            f"nor an existing scheduler file")
    try:
        if "://" in scheduler:
            client = Client(scheduler, timeout="30s")
        else:
            client = Client(scheduler_file=scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise FeaturesError(f"cannot connect to the dask scheduler {scheduler} ({type(exc).__name__}: "
                            f"{exc}). Is it running? Start one with `dask scheduler` or dask-jobqueue."
                            ) from exc
    return joblib.parallel_config(backend="dask"), client


def run_features(
    fma_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    subset: str = "large",
    jobs: int = -1,
    recipe: Recipe | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    skip_known_bad: bool = True,
    min_duration: float | None = DEFAULT_MIN_DURATION,
    track_timeout: float | None = DEFAULT_TRACK_TIMEOUT,
    shard_index: int = 0,
    num_shards: int = 1,
    force: bool = False,
    backend: str = "local",
    scheduler: str | None = None,
    compression: str | None = None,
    max_failure_fraction: float = 0.5,
    finalize: bool = True,
    progress: bool = True,
    log=print,
) -> dict:
    """The features stage; see the module docstring. Returns a summary dict.

    Returns
    -------
    dict
        ``computed`` (per-shard results of :func:`compute_shard`), ``already_complete``
        (shard names), ``planned`` (count), ``skipped`` {reason: count}, ``failed``
        {reason: count}, ``written`` (tracks in computed shards), ``seconds``,
        ``manifest`` (path or None), ``missing`` (shards still absent).

    Raises
    ------
    FeaturesError, MetadataError
    """
    import joblib
    from tqdm import tqdm

    start = time.perf_counter()
    fma_dir, out = Path(fma_dir), Path(out)
    recipe = recipe or RECIPES["reference"]
    audio, selection, specs, plan = build_plan(
        fma_dir, subset, recipe=recipe, shard_size=shard_size, skip_known_bad=skip_known_bad,
        min_duration=min_duration)

    from shards import MANIFEST_NAME, atomic_write_text, parse_shard_name, read_shard

    out.mkdir(parents=True, exist_ok=True)
    old = read_plan(out)
    if old is not None and old != plan:
        diffs = plan_differences(old, plan)
        if not force:
            raise FeaturesError(
                f"{out / PLAN_NAME} was made with different settings ({'; '.join(diffs)}). Its shards would "
                f"mix with these. Use another --out, or --force to recompute every shard here."
            )
        log(f"--force: replacing the shard set in {out} ({'; '.join(diffs)})")
    if force:
        planned = {s.name for s in specs}
        for path in out.glob("*.h5"):
            try:
                parse_shard_name(path.name)
            except ValueError:
                continue
            if path.name not in planned:
                path.unlink()
        (out / MANIFEST_NAME).unlink(missing_ok=True)
    plan_text = json.dumps(plan, indent=1, sort_keys=True) + "\n"
    plan_path = out / PLAN_NAME
    if not plan_path.exists() or plan_path.read_text(encoding="utf-8") != plan_text:
        atomic_write_text(plan_path, plan_text)

    mine = select_for_task(specs, shard_index, num_shards)
    recipe_dict = recipe.to_dict()
    todo, complete = [], []
    failed_reasons: Counter = Counter()
    for spec in mine:
        path = out / spec.name
        contents = None if force else complete_shard(path, spec, recipe_dict)
        if contents is not None:
            complete.append(spec)
            failed_reasons.update(_reason_key(r) for _, r in contents.failed)
        else:
            if path.exists() and not force:
                try:
                    other = read_shard(path).recipe
                except ValueError:
                    other = recipe_dict  # unreadable: recomputed below
                if other != recipe_dict:
                    raise FeaturesError(f"{path} was made with another recipe; use --force to replace it")
            todo.append(spec)
    _spot_check_files(audio, todo, max_failure_fraction)

    n_todo = sum(len(s.track_ids) for s in todo)
    log(f"features: {len(specs)} shards planned ({selection.num_tracks()} tracks, "
        f"{sum(len(v) for v in selection.skipped.values())} skipped); {len(complete)} of this task's "
        f"{len(mine)} already complete; computing {len(todo)} ({n_todo} tracks) with {backend} backend")

    results: list[dict] = []
    if todo:
        tasks = [{"spec": s.to_dict(), "audio_dir": str(audio.resolve()), "out": str(out.resolve()),
                  "recipe": recipe_dict, "subset": subset, "class_names": list(fma.CLASS_NAMES),
                  "timeout_s": track_timeout, "compression": compression} for s in todo]
        config, client = _open_backend(backend, scheduler)
        try:
            with config:
                n_jobs = -1
                if backend == "local":
                    n_jobs = min(jobs if jobs > 0 else (os.cpu_count() or 1), len(tasks))
                parallel = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered", batch_size=1,
                                           pre_dispatch="n_jobs")
                bar = tqdm(total=n_todo, unit="track", disable=not progress, dynamic_ncols=True,
                           desc="features", file=sys.stderr)
                done = failed = 0
                try:
                    for result in parallel(joblib.delayed(compute_shard)(t) for t in tasks):
                        results.append(result)
                        done += result["written"] + len(result["failed"])
                        failed += len(result["failed"])
                        failed_reasons.update(_reason_key(r) for _, r in result["failed"])
                        bar.update(result["written"] + len(result["failed"]))
                        bar.set_postfix(failed=failed, shards=f"{len(results)}/{len(tasks)}")
                        if done >= EARLY_STOP_MIN_TRACKS and failed / done > max_failure_fraction:
                            common = ", ".join(f"{r!r} x{c}" for r, c in failed_reasons.most_common(3))
                            raise FeaturesError(
                                f"stopping early: {failed} of {done} tracks failed ({common}). Is --fma-dir "
                                f"right (audio read from {audio})? Finished shards are kept."
                            )
                finally:
                    bar.close()
        finally:
            if client is not None:
                client.close()

    summary = {
        "planned": len(specs), "already_complete": [s.name for s in complete], "computed": results,
        "written": sum(r["written"] for r in results),
        "skipped": {k: len(v) for k, v in selection.skipped.items()},
        "failed": dict(failed_reasons), "manifest": None, "missing": [],
    }
    if finalize:
        from preprocess.finalize import finalize_shards

        manifest_path, missing = finalize_shards(out, log=lambda *_: None)
        summary["manifest"], summary["missing"] = manifest_path, missing
    summary["seconds"] = time.perf_counter() - start
    _print_summary(summary, out, log)
    return summary


def _reason_key(reason: str) -> str:
    """Group failure reasons for counting: 'too short: 1.2 s < 5 s' -> 'too short'."""
    head = reason.split(":", 1)[0]
    return head if head in ("too short", "cannot decode", "bad audio", "error") else reason


def _print_summary(summary: dict, out: Path, log) -> None:
    lines = [f"features: done in {summary['seconds']:.1f} s: {len(summary['computed'])} shards computed "
             f"({summary['written']} tracks written), {len(summary['already_complete'])} already complete"]
    if summary["skipped"]:
        lines.append("  skipped (never assigned): " + ", ".join(
            f"{r} x{c}" for r, c in sorted(summary["skipped"].items(), key=lambda kv: -kv[1])))
    if summary["failed"]:
        lines.append("  failed (recorded in the shards): " + ", ".join(
            f"{r} x{c}" for r, c in sorted(summary["failed"].items(), key=lambda kv: -kv[1])))
    if summary["manifest"]:
        lines.append(f"  manifest: {summary['manifest']}")
    elif summary["missing"]:
        lines.append(f"  {len(summary['missing'])} shards of the plan are not done or incomplete (other "
                     f"array tasks?), e.g. {summary['missing'][0]}; `python -m preprocess finalize {out}` "
                     f"writes the manifest once they are")
    log("\n".join(lines))


# --------------------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fma-dir", default="data", help="folder holding fma_metadata/ and fma_<subset>/")
    parser.add_argument("--subset", default="large", choices=fma.SUBSETS,
                        help="FMA subset (nested: medium = small + medium tracks)")
    parser.add_argument("--out", required=True, help="shard folder (created)")
    parser.add_argument("--jobs", type=int, default=-1, help="worker processes (default: all cores)")
    parser.add_argument("--recipe", default="reference", choices=sorted(RECIPES),
                        help="feature recipe (reference = the reference project's)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help="tracks per shard (one shard = one task)")
    parser.add_argument("--min-duration", type=float, default=DEFAULT_MIN_DURATION,
                        help="skip tracks whose tracks.csv duration is <= this many seconds "
                             "(negative: keep all)")
    parser.add_argument("--no-skip-known-bad", dest="skip_known_bad", action="store_false",
                        help="also try FMA's known-bad ids (skipped by default)")
    parser.add_argument("--track-timeout", type=float, default=DEFAULT_TRACK_TIMEOUT,
                        help="seconds one track may take before it is recorded as failed (0: no limit)")
    parser.add_argument("--shard-index", type=int, default=0, help="this task computes shards k with "
                        "k %% NUM_SHARDS == SHARD_INDEX (array jobs)")
    parser.add_argument("--num-shards", type=int, default=1, help="number of array tasks sharing the work")
    parser.add_argument("--force", action="store_true",
                        help="recompute every shard, replacing a shard set made with other settings")
    parser.add_argument("--backend", default="local", choices=("local", "dask"),
                        help="local process pool, or an existing dask cluster")
    parser.add_argument("--scheduler", default=None,
                        help="dask scheduler: tcp://host:port or a scheduler-file path")
    parser.add_argument("--compression", default=None, choices=("gzip", "lzf"),
                        help="compress images (the training side can then not memory-map them)")
    parser.add_argument("--max-failure-fraction", type=float, default=0.5,
                        help="stop early when more than this fraction of tracks fails")
    parser.add_argument("--no-finalize", dest="finalize", action="store_false",
                        help="do not write manifest.json at the end")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    try:
        summary = run_features(
            args.fma_dir, args.out, subset=args.subset, jobs=args.jobs, recipe=RECIPES[args.recipe],
            shard_size=args.shard_size, skip_known_bad=args.skip_known_bad,
            min_duration=None if args.min_duration < 0 else args.min_duration,
            track_timeout=args.track_timeout or None, shard_index=args.shard_index,
            num_shards=args.num_shards, force=args.force, backend=args.backend, scheduler=args.scheduler,
            compression=args.compression, max_failure_fraction=args.max_failure_fraction,
            finalize=args.finalize, progress=args.progress,
        )
    except (FeaturesError, MetadataError, ShardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.finalize or summary["manifest"]:
        return 0
    # An array task leaves other tasks' shards missing: fine. A whole run must end complete.
    return 0 if args.num_shards > 1 else 1
