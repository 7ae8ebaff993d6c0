"""Decode every selected FMA track once into 128x128 log-mel images in HDF5 shards.

    python -m preprocess features --fma-dir data --subset large --out shards/fma_large --jobs 8

Reads FMA_DIR/fma_metadata/tracks.csv, selects the subset's tracks with a top
genre (skipping FMA's known-bad ids and tracks whose listed duration is <= 29 s),
cuts each split into shards of --shard-size tracks and computes every shard as
one task of a process pool (or of a dask cluster: --backend dask --scheduler
tcp://host:port | scheduler-file). Each shard is written to a temporary file and
renamed into place, so a reader never sees a partial shard.

The MP3s are read from the unpacked tree FMA_DIR/fma_<subset>/ or, where there is
none (or with --audio-zip ZIP), straight from FMA's zip FMA_DIR/fma_<subset>.zip:
each task opens the zip once and decompresses only its own tracks, in memory
(preprocess.audio_source). Both make the same shards.

Outputs in --out: plan.json (written first: recipe, every shard's tracks, skipped
tracks by reason), the shards (train-00000-of-00150.h5 ...) and, once every
shard exists, manifest.json.

Rerunning is safe and cheap: complete shards made with the same recipe are
skipped (a finished run does no decoding and rewrites nothing); a killed run
resumes where it stopped. A different recipe or selection into the same --out
is refused unless --force. --task-index I --num-tasks N computes only this array
task's share, the shards at positions k with k % N == I (SLURM array tasks; the
old names --shard-index/--num-shards still work, with a warning); finalize then
writes the manifest.

Ctrl-C stops the workers, says how many shards are complete and exits 130;
rerunning the same command resumes.

Per-track problems (missing, empty, undecodable, too short, hung) never stop
the run: they are recorded in the shard with their reason and summarized at
the end. A run where most tracks fail stops early with an error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from preprocess import fma
from preprocess.assign import ShardSpec, select_for_task
from preprocess.audio_source import AudioSource, missing_tracks, track_location
from preprocess.errors import FeaturesError
from preprocess.options import FeatureOptions, add_plan_arguments, add_run_arguments, worker_count
from preprocess.plan import (
    ShardPlan,
    build_plan,
    changed_plan_error,
    plan_changes,
    plan_extras,
    remove_unplanned,
    shard_status,
    write_plan,
)
from preprocess.recipe import Recipe
from preprocess.shard_runs import clear_attempts, forget_attempts, remove_attempts_dir

# Stop early when, after at least this many tracks, more than max_failure_fraction failed.
EARLY_STOP_MIN_TRACKS = 20

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the shard task


def software_versions() -> dict:
    """Versions stored with every shard (provenance)."""
    import h5py
    import librosa
    import numpy
    import scipy
    import soundfile
    import soxr

    return {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "librosa": librosa.__version__,
        "soundfile": soundfile.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
        "soxr": soxr.__version__,
        "h5py": h5py.__version__,
    }


def track_result(tracks, track_id: int, task: dict):
    """One track of a shard task: its image, or why it has none. Never raises for a bad track.

    Parameters
    ----------
    tracks
        The shard's reader (``preprocess.audio_source.open_tracks``).
    track_id : int
    task : dict
        As for :func:`compute_shard`.

    Returns
    -------
    preprocess.audio.TrackImage or str
        The image (``image`` of shape (n_mels, n_frames); ``fine`` with a fine recipe) and its
        padding, or the failure reason.
    """
    from preprocess.audio import TrackFailure, track_image
    from preprocess.audio_source import MemberError
    from preprocess.supervise import inject_fault

    inject_fault(track_id)  # TEST ONLY: FMA_GENRE_TEST_FAULTS; nothing happens when it is unset
    recipe, fine = _recipes(task)
    keep_silence = task.get("keep_silence", False)
    # No SIGALRM limit here (timeout_s None): the supervisor kills a worker past --track-timeout from
    # outside. A SIGALRM raised inside a C callback (numba compiling librosa's kernels) was seen to
    # leave the process in a bad state.
    try:  # a path, or a zip member in memory
        return tracks.apply(track_id, lambda source: track_image(source, recipe, None, keep_silence, fine))
    except (TrackFailure, MemberError) as exc:
        return str(exc)
    except Exception as exc:  # an unexpected error in one track must not stop the run
        return f"error: {type(exc).__name__}: {exc}"


def _recipes(task: dict) -> tuple[Recipe, Recipe | None]:
    """The task's recipe and its fine recipe (None without ``mel_fine``)."""
    fine = Recipe.from_dict(task["fine_recipe"]) if task.get("fine_recipe") else None
    return Recipe.from_dict(task["recipe"]), fine


def _shard_results(task: dict, one_track, beat) -> list:
    """``one_track(tracks, track_id)`` for each track of the shard in order, announcing each with
    ``beat(track_id)`` (then ``beat(None)``); tracks in ``task["known_failures"]`` get that reason
    without being decoded."""
    from preprocess.audio import warm_up
    from preprocess.audio_source import open_tracks

    spec = ShardSpec.from_dict(task["spec"])
    known = {int(k): reason for k, reason in task.get("known_failures", {}).items()}
    beat = beat or (lambda item: None)
    warm_up(*_recipes(task))  # before the first beat: not timed
    results = []
    with open_tracks(AudioSource.from_dict(task["audio"])) as tracks:  # a zip: opened once per shard
        for track_id in spec.track_ids:
            if track_id in known:
                results.append(known[track_id])
                continue
            beat(track_id)
            results.append(one_track(tracks, track_id))
    beat(None)
    return results


def write_shard_file(task: dict, results: list, seconds: float) -> dict:
    """Write the shard of ``task`` from its tracks' results (atomically); :func:`compute_shard`'s result.

    Parameters
    ----------
    task : dict
        As for :func:`compute_shard`.
    results : list
        Per track of the spec, in order: a TrackImage, or the failure reason (str).
    seconds : float
        Time spent so far (reported).
    """
    import numpy as np

    from preprocess.genres import genres_extra
    from shards import write_shard

    start = time.perf_counter()
    spec = ShardSpec.from_dict(task["spec"])
    recipe = Recipe.from_dict(task["recipe"])
    fine = Recipe.from_dict(task["fine_recipe"]) if task.get("fine_recipe") else None
    out = Path(task["out"])
    kept = [i for i, r in enumerate(results) if not isinstance(r, str)]
    images = np.empty((len(kept), recipe.n_mels, recipe.n_frames), dtype=np.float32)
    fine_images = None if fine is None else np.empty((len(kept), fine.n_mels, fine.n_frames), np.float16)
    for row, i in enumerate(kept):
        images[row] = results[i].image
        if fine_images is not None:
            fine_images[row] = results[i].fine
    failed = [(t, r) for t, r in zip(spec.track_ids, results, strict=True) if isinstance(r, str)]
    padded = [(spec.track_ids[i], results[i].seconds) for i in kept if results[i].padded]
    # A killed earlier attempt at this shard may have left its temporary file.
    for stale in out.glob(f".{spec.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    extras = {}
    if fine is not None:
        extras["mel_fine"] = (fine_images, {"recipe": task["fine_recipe"]})
    if task.get("genre_table") is not None:
        extras["genres"] = genres_extra(task["genre_table"], [spec.genres[i] for i in kept])
    checksum = write_shard(
        out / spec.name,
        mel=images,
        label=np.asarray([spec.labels[i] for i in kept], dtype=np.int64),
        track_id=np.asarray([spec.track_ids[i] for i in kept], dtype=np.int64),
        split=spec.split,
        shard_index=spec.shard_index,
        num_shards=spec.num_shards,
        subset=task["subset"],
        recipe=task["recipe"],
        class_names=task["class_names"],
        versions=software_versions(),
        failed=failed,
        compression=task["compression"],
        padded=padded,
        extras=extras,
    )
    return {
        "name": spec.name,
        "written": len(kept),
        "failed": failed,
        "padded": padded,
        "checksum": checksum,
        "seconds": seconds + time.perf_counter() - start,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


def compute_shard(task: dict, beat=None) -> dict:
    """Decode one shard's tracks and write the shard file (atomically), in this process.

    Runs in a worker process of the supervised pool (``preprocess.shard_runs``); importable by
    module name (``preprocess.driver.compute_shard``).

    Parameters
    ----------
    task : dict
        ``spec`` (ShardSpec.to_dict()), ``audio`` (AudioSource.to_dict()), ``out``, ``recipe``
        (Recipe.to_dict()), ``fine_recipe`` (Recipe.to_dict() or None: the ``mel_fine`` image),
        ``subset``, ``class_names``, ``timeout_s``, ``compression``, ``keep_silence`` (optional,
        default False), ``genre_table`` (target genres_all only: the shard then also holds
        ``genres``, each written track's multi-hot row), ``known_failures`` (optional: {track id
        (str): reason} of tracks failed without decoding them, e.g. one that timed out in an
        earlier attempt).
    beat : callable, optional
        ``beat(track_id)`` as each track starts, ``beat(None)`` after the last (the supervisor's
        heartbeat).

    Returns
    -------
    dict
        ``name``, ``written`` (tracks), ``failed`` [(track_id, reason)], ``padded``
        [(track_id, seconds)], ``checksum``, ``seconds``, ``pid``, ``host``.
    """
    start = time.perf_counter()
    results = _shard_results(task, lambda tracks, track_id: track_result(tracks, track_id, task), beat)
    return write_shard_file(task, results, time.perf_counter() - start)


def compute_shard_isolated(task: dict, beat=None) -> dict:
    """:func:`compute_shard` with each track decoded in a process of its own (a fork of this one).

    A track whose process dies is failed as ``worker died: SIGSEGV while decoding`` and the shard
    is written with the rest: how the supervisor finds the tracks that kill a process.
    """
    from preprocess.supervise import run_isolated

    # The forked children inherit this process warm (_shard_results warms it up first): a cold
    # child would cost ~0.7 s, a warm one what a track costs.

    def isolated(tracks, track_id: int):
        status, value = run_isolated(track_result, tracks, track_id, task)
        return value if status == "ok" else f"worker died: {value} while decoding"

    start = time.perf_counter()
    results = _shard_results(task, isolated, beat)
    return {**write_shard_file(task, results, time.perf_counter() - start), "isolated": True}


def compute_shard_supervised(task: dict) -> dict:
    """A dask task: :func:`compute_shard` in a worker process of this one, under the rules of
    ``preprocess.shard_runs`` (a crashing decoder never kills the dask worker; a hanging track is
    killed after ``task["timeout_s"]``). Returns :func:`compute_shard`'s result, or ``{"name",
    "gave_up"}``."""
    from preprocess.shard_runs import run_shards

    with _cached_pool(task["timeout_s"]) as pool:
        (result,) = run_shards(pool, [task])
    return result


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()
# A dask worker's decoding process exits on its own after this long without a shard.
POOL_IDLE_S = 60.0


@contextlib.contextmanager
def _cached_pool(timeout_s: float | None):
    """This thread's one-process pool, kept between dask tasks (the interpreter starts once); a
    pool left in a bad state by an error is closed."""
    from preprocess.supervise import Pool

    key = (threading.get_ident(), timeout_s)
    with _POOLS_LOCK:
        pool = _POOLS.pop(key, None) or Pool(1, timeout_s, idle_s=POOL_IDLE_S)
    try:
        yield pool
    except BaseException:
        pool.close()
        raise
    with _POOLS_LOCK:
        _POOLS[key] = pool


def close_cached_pools() -> int:
    """Stop the decoding processes kept by :func:`compute_shard_supervised` (run on every dask
    worker at the end of a run); returns how many pools were closed."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.close()
    return len(pools)


def _spot_check_files(audio: AudioSource, specs: list[ShardSpec], max_failure_fraction: float) -> None:
    """Fail fast when most sampled tracks have no file (e.g. the wrong FMA_DIR or SUBSET)."""
    ids = [t for s in specs for t in s.track_ids]
    if not ids:
        return
    sample = ids[:: max(1, len(ids) // 50)][:50]
    missing = missing_tracks(audio, sample)
    if len(sample) >= 4 and len(missing) / len(sample) > max_failure_fraction:
        raise FeaturesError(
            f"{len(missing)} of {len(sample)} sampled tracks have no file in {audio.describe()} "
            f"(e.g. {track_location(audio, missing[0])}). Is --fma-dir / --subset right? "
            f"Unpack the audio zip there (`make download`), or name the zip with --audio-zip."
        )


def connect_dask(scheduler: str):
    """A ``distributed.Client`` of the running scheduler at ``scheduler`` (an address or a scheduler file)."""
    try:
        from distributed import Client
    except ImportError as exc:
        raise FeaturesError(
            "--backend dask needs the 'distributed' package (pip install '.[cluster]')"
        ) from exc
    if "://" not in scheduler and not Path(scheduler).is_file():
        raise FeaturesError(
            f"--scheduler {scheduler!r} is neither an address (tcp://host:port) "
            f"nor an existing scheduler file"
        )
    try:
        if "://" in scheduler:
            return Client(scheduler, timeout="30s")
        return Client(scheduler_file=scheduler, timeout="30s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise FeaturesError(
            f"cannot connect to the dask scheduler {scheduler} ({type(exc).__name__}: "
            f"{exc}). Is it running? Start one with `dask scheduler` or dask-jobqueue."
        ) from exc


@contextlib.contextmanager
def shard_results(options: FeatureOptions, tasks: list[dict]) -> Iterator[Iterator[dict]]:
    """The shard tasks' results as they end (``preprocess.shard_runs.run_shards``'s), computed on
    ``options.backend``; whatever still runs is stopped when the block ends.

    local: a supervised pool of --jobs worker processes (at most one per task). dask: the running
    cluster at --scheduler (connected here, disconnected after), one task per shard, each computing
    its shard in a supervised process of its own (:func:`compute_shard_supervised`).
    """
    if options.backend == "local":
        from preprocess.shard_runs import run_shards
        from preprocess.supervise import Pool

        with Pool(worker_count(options, len(tasks)), options.track_timeout) as pool:
            with contextlib.closing(run_shards(pool, tasks)) as results:
                yield results
        return
    client = connect_dask(options.scheduler)
    try:
        with contextlib.closing(_dask_results(client, tasks)) as results:
            yield results
    finally:
        client.close()


def _dask_results(client, tasks: list[dict]) -> Iterator[dict]:
    """Submit every shard as a dask task; yield results as they come. A shard whose dask workers
    died (``KilledWorker``, after the scheduler's own retries) is submitted once more (its attempt
    records make that run isolate its tracks), then given up; the other shards go on."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    futures = {}

    def submit(task: dict):
        future = client.submit(compute_shard_supervised, task, pure=False)
        futures[future] = task
        return future

    pending = as_completed([submit(t) for t in tasks])
    killed: Counter = Counter()
    try:
        for future in pending:
            task = futures.pop(future)
            name = task["spec"]["name"]
            try:
                result = future.result()
            except KilledWorker as exc:
                killed[name] += 1
                if killed[name] == 1:
                    log.warning("%s: dask workers running it died (KilledWorker); submitting it again", name)
                    pending.add(submit(task))
                    continue
                result = {"name": name, "gave_up": f"the dask workers running it died twice ({exc})"}
            yield result
    finally:
        client.cancel(list(futures))
        with contextlib.suppress(Exception):  # best effort: idle decoding processes also exit on their own
            client.run(close_cached_pools)


# --------------------------------------------------------------------------- the run


def prepare_out(options: FeatureOptions, plan: ShardPlan) -> None:
    """Check --out against the plan (other settings are refused unless --force); write plan.json."""
    options.out.mkdir(parents=True, exist_ok=True)
    changes = plan_changes(options.out, plan)
    if changes and not options.force:
        raise changed_plan_error(
            options.out, changes, "Use another --out, or --force to recompute every shard here."
        )
    if changes:
        log.warning("--force: replacing the shard set in %s (%s)", options.out, "; ".join(changes))
    if options.force:
        remove_unplanned(options.out, plan)
        clear_attempts(options.out)
    write_plan(options.out, plan)


def sort_shards(
    options: FeatureOptions, plan: ShardPlan, mine: list[ShardSpec]
) -> tuple[list[ShardSpec], list[ShardSpec], Counter, list[float]]:
    """This task's shards to compute, those already complete, and the failure reasons and padded
    clips' lengths recorded in those."""
    todo, complete = [], []
    failed_reasons: Counter = Counter()
    padded: list[float] = []
    for spec in mine:
        if options.force:
            todo.append(spec)
            continue
        contents, problem = shard_status(options.out / spec.name, spec, plan.data)
        if problem is None:
            complete.append(spec)
            failed_reasons.update(reason_key(r) for _, r in contents.failed)
            padded += [seconds for _, seconds in contents.padded]
            continue
        if contents is not None and (
            contents.recipe != plan.recipe or contents.extras != plan_extras(plan.data)
        ):
            raise FeaturesError(
                f"{options.out / spec.name} was made with another recipe; use --force to replace it"
            )
        todo.append(spec)  # missing, unreadable or incomplete: computed again
    return todo, complete, failed_reasons, padded


def shard_task(options: FeatureOptions, plan: ShardPlan, spec: ShardSpec) -> dict:
    """The argument of :func:`compute_shard` for ``spec``: plain data, sent to a worker."""
    return {
        "spec": spec.to_dict(),
        "audio": plan.audio.to_dict(),
        "out": str(options.out.resolve()),
        "recipe": plan.recipe,
        "fine_recipe": plan.data.get("fine_recipe"),
        "subset": options.subset,
        "class_names": list(fma.CLASS_NAMES),
        "timeout_s": options.track_timeout,
        "compression": options.compression,
        "keep_silence": options.keep_silence,
        **({"genre_table": plan.genre_table} if plan.genre_table is not None else {}),
    }


def compute_shards(
    options: FeatureOptions,
    plan: ShardPlan,
    todo: list[ShardSpec],
    results: list[dict],
    failed_reasons: Counter,
    gave_up: list[dict] | None = None,
) -> None:
    """Compute ``todo``'s shards in parallel, with a progress bar on stderr.

    Appends each shard's result to ``results`` as it arrives (so that the caller knows how
    far the run got if it is interrupted), counts failure reasons into ``failed_reasons`` and
    appends ``{"name", "gave_up"}`` to ``gave_up`` for a shard whose workers kept dying.
    Stops early (FeaturesError) when more than --max-failure-fraction of the tracks fail.
    On any exception, Ctrl-C included, the workers are stopped before it propagates.
    """
    from tqdm import tqdm

    from shards.cli import progress_disabled

    tasks = [shard_task(options, plan, spec) for spec in todo]
    bar = tqdm(
        total=sum(len(s.track_ids) for s in todo),
        unit="track",
        desc="features",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not options.progress or progress_disabled(),
    )
    done = failed = 0
    with bar, shard_results(options, tasks) as outputs:
        for result in outputs:
            if "gave_up" in result:
                log.warning("%s: given up for this run: %s", result["name"], result["gave_up"])
                if gave_up is not None:
                    gave_up.append(result)
                continue
            results.append(result)
            done += result["written"] + len(result["failed"])
            failed += len(result["failed"])
            failed_reasons.update(reason_key(r) for _, r in result["failed"])
            bar.update(result["written"] + len(result["failed"]))
            bar.set_postfix(failed=failed, shards=f"{len(results)}/{len(tasks)}")
            if done >= EARLY_STOP_MIN_TRACKS and failed / done > options.max_failure_fraction:
                common = ", ".join(f"{r!r} x{c}" for r, c in failed_reasons.most_common(3))
                raise FeaturesError(
                    f"stopping early: {failed} of {done} tracks failed ({common}). Is --fma-dir "
                    f"right (audio read from {plan.audio.describe()})? Finished shards are kept."
                )


def run_features(options: FeatureOptions) -> dict:
    """The features stage; see the module docstring.

    Returns
    -------
    dict
        ``planned`` (shards in the plan), ``mine`` (this task's share), ``already_complete``
        (shard names), ``computed`` (per-shard results of :func:`compute_shard`), ``written``
        (tracks in computed shards), ``skipped`` {reason: count}, ``failed`` {reason: count},
        ``padded`` (sorted real lengths of the short clips padded with silence, this task's shards),
        ``gave_up`` [(shard name, why)] (shards whose worker processes kept dying, left missing),
        ``genres`` (target genres_all: ``preprocess.metadata.Selection.genre_summary()``; else None),
        ``manifest`` (path or None), ``missing`` (shards still absent), ``seconds``.

    Raises
    ------
    FmaGenreError
        The run cannot start or go on (FeaturesError, MetadataError, ShardError).
    KeyboardInterrupt
        After the workers stopped and a warning said how far the run got.
    """
    start = time.perf_counter()
    plan = build_plan(options)
    prepare_out(options, plan)
    mine = select_for_task(plan.specs, options.task_index, options.num_tasks)
    todo, complete, failed_reasons, padded = sort_shards(options, plan, mine)
    forget_attempts(options.out, [s.name for s in complete])  # killed between the rename and the cleanup
    _spot_check_files(plan.audio, todo, options.max_failure_fraction)
    log.info(
        "features: %d shards planned (%d tracks, %d skipped); %d of this task's %d already complete; "
        "computing %d (%d tracks) with %s backend from %s",
        len(plan.specs),
        plan.selection.num_tracks(),
        sum(len(v) for v in plan.selection.skipped.values()),
        len(complete),
        len(mine),
        len(todo),
        sum(len(s.track_ids) for s in todo),
        options.backend,
        plan.audio.describe(),
    )
    results: list[dict] = []
    gave_up: list[dict] = []
    try:
        if todo:
            compute_shards(options, plan, todo, results, failed_reasons, gave_up)
    except KeyboardInterrupt:
        # The workers are stopped: count what is on disk (a shard may have been renamed into place
        # after its result last reached this process).
        now = sum(shard_status(options.out / s.name, s, plan.data)[1] is None for s in todo)
        log.warning(
            "interrupted: %d of %d shards are complete (%d computed in this run); finished shards "
            "are kept: rerun the same command to resume",
            len(complete) + now,
            len(mine),
            now,
        )
        raise
    finally:
        remove_attempts_dir(options.out)
    summary = {
        "planned": len(plan.specs),
        "mine": len(mine),
        "already_complete": [s.name for s in complete],
        "computed": results,
        "written": sum(r["written"] for r in results),
        "skipped": {k: len(v) for k, v in plan.selection.skipped.items()},
        "failed": dict(failed_reasons),
        "gave_up": [(r["name"], r["gave_up"]) for r in gave_up],
        "manifest": None,
        "missing": [],
        "padded": sorted(padded + [seconds for r in results for _, seconds in r["padded"]]),
        "genres": plan.selection.genre_summary(),
    }
    if options.finalize:
        from preprocess.finalize import finalize_shards

        summary["manifest"], summary["missing"] = finalize_shards(options.out)
    summary["seconds"] = time.perf_counter() - start
    return summary


def reason_key(reason: str) -> str:
    """Group failure reasons for counting: 'too short: 1.2 s < 5 s' -> 'too short'."""
    head = reason.split(":", 1)[0]
    keys = ("too short", "cannot decode", "bad audio", "error", "missing file", "bad zip member")
    return head if head in keys else reason


def format_summary(summary: dict, out: Path) -> str:
    """The run's result in a few lines, for stdout."""
    lines = [
        f"features: done in {summary['seconds']:.1f} s: {len(summary['computed'])} shards computed "
        f"({summary['written']} tracks written), {len(summary['already_complete'])} already complete"
    ]
    if summary.get("genres"):
        g = summary["genres"]
        lines.append(
            f"  genres_all: {g['selected']} tracks selected ({g['no_top_genre']} without a top-level "
            f"genre); {g['genres_in_train']} of the {g['genres']} genres of genres.csv have at least one "
            f"training track"
        )
    if summary["skipped"]:
        lines.append(
            "  skipped (never assigned): "
            + ", ".join(f"{r} x{c}" for r, c in sorted(summary["skipped"].items(), key=lambda kv: -kv[1]))
        )
    if summary["failed"]:
        lines.append(
            "  failed (recorded in the shards): "
            + ", ".join(f"{r} x{c}" for r, c in sorted(summary["failed"].items(), key=lambda kv: -kv[1]))
        )
    for name, why in summary.get("gave_up", []):
        lines.append(f"  given up for this run (rerun to try again): {name}: {why}")
    if summary["padded"]:
        lines.append(
            f"  padded with silence (clips shorter than the recipe's duration; listed in the "
            f"manifest): {len(summary['padded'])}, shortest {summary['padded'][0]:.1f} s"
        )
    if summary["manifest"]:
        lines.append(f"  manifest: {summary['manifest']}")
    elif summary["missing"]:
        lines.append(
            f"  {len(summary['missing'])} shards of the plan are not done or incomplete (other "
            f"array tasks?), e.g. {summary['missing'][0]}; `python -m preprocess finalize {out}` "
            f"writes the manifest once they are"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_plan_arguments(parser)
    add_run_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """``python -m preprocess features``: 0 done, 1 a whole run left shards missing (see shards.cli)."""
    from shards.cli import EXIT_FAILURES, EXIT_OK

    options = FeatureOptions.from_args(args)
    summary = run_features(options)
    print(format_summary(summary, options.out))
    if not options.finalize or summary["manifest"]:
        return EXIT_OK
    # An array task leaves other tasks' shards missing: fine. A whole run must end complete.
    return EXIT_OK if options.num_tasks > 1 else EXIT_FAILURES
