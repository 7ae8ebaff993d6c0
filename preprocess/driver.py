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
import time
from collections import Counter
from pathlib import Path

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


def compute_shard(task: dict) -> dict:
    """Decode one shard's tracks and write the shard file (atomically). A joblib/dask task.

    Importable by module name (``preprocess.driver.compute_shard``) so that
    dask workers can run it.

    Parameters
    ----------
    task : dict
        ``spec`` (ShardSpec.to_dict()), ``audio`` (AudioSource.to_dict()), ``out``, ``recipe``
        (Recipe.to_dict()), ``fine_recipe`` (Recipe.to_dict() or None: the ``mel_fine`` image),
        ``subset``, ``class_names``, ``timeout_s``, ``compression``, ``keep_silence`` (optional,
        default False), ``genre_table`` (target genres_all only: the shard then also holds
        ``genres``, each written track's multi-hot row).

    Returns
    -------
    dict
        ``name``, ``written`` (tracks), ``failed`` [(track_id, reason)], ``padded``
        [(track_id, seconds)], ``checksum``, ``seconds``, ``pid``, ``host``.
    """
    import numpy as np

    from preprocess.audio import TrackFailure, track_image
    from preprocess.audio_source import MemberError, open_tracks
    from preprocess.genres import genres_extra
    from shards import write_shard

    start = time.perf_counter()
    spec = ShardSpec.from_dict(task["spec"])
    recipe = Recipe.from_dict(task["recipe"])
    fine = Recipe.from_dict(task["fine_recipe"]) if task.get("fine_recipe") else None
    out = Path(task["out"])
    images = np.empty((len(spec.track_ids), recipe.n_mels, recipe.n_frames), dtype=np.float32)
    fine_images = (
        None if fine is None else np.empty((len(spec.track_ids), fine.n_mels, fine.n_frames), np.float16)
    )
    kept: list[int] = []
    failed: list[tuple[int, str]] = []
    padded: list[tuple[int, float]] = []

    def image(source):
        return track_image(source, recipe, task["timeout_s"], task.get("keep_silence", False), fine)

    with open_tracks(AudioSource.from_dict(task["audio"])) as tracks:  # a zip: opened once per shard
        for i, track_id in enumerate(spec.track_ids):
            try:
                result = tracks.apply(track_id, image)  # a path, or a zip member in memory
                images[len(kept)] = result.image
                if fine_images is not None:
                    fine_images[len(kept)] = result.fine
                kept.append(i)
                if result.padded:
                    padded.append((track_id, result.seconds))
            except (TrackFailure, MemberError) as exc:
                failed.append((track_id, str(exc)))
            except Exception as exc:  # an unexpected error in one track must not stop the run
                failed.append((track_id, f"error: {type(exc).__name__}: {exc}"))
    # A killed earlier attempt at this shard may have left its temporary file.
    for stale in out.glob(f".{spec.name}.tmp-*"):
        stale.unlink(missing_ok=True)
    extras = {}
    if fine is not None:
        extras["mel_fine"] = (fine_images[: len(kept)], {"recipe": task["fine_recipe"]})
    if task.get("genre_table") is not None:
        extras["genres"] = genres_extra(task["genre_table"], [spec.genres[i] for i in kept])
    checksum = write_shard(
        out / spec.name,
        mel=images[: len(kept)],
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
        "seconds": time.perf_counter() - start,
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }


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
def parallel_backend(options: FeatureOptions, n_tasks: int):
    """Configure joblib for ``options.backend``; yields ``n_jobs`` for ``joblib.Parallel``.

    local: a process pool of --jobs workers (at most one per task). dask: the running
    cluster at --scheduler, connected here and disconnected after.
    """
    import joblib

    if options.backend == "local":
        yield worker_count(options, n_tasks)
        return
    client = connect_dask(options.scheduler)
    try:
        with joblib.parallel_config(backend="dask"):
            yield -1
    finally:
        client.close()


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
) -> None:
    """Compute ``todo``'s shards in parallel, with a progress bar on stderr.

    Appends each shard's result to ``results`` as it arrives (so that the caller knows how
    far the run got if it is interrupted) and counts failure reasons into ``failed_reasons``.
    Stops early (FeaturesError) when more than --max-failure-fraction of the tracks fail.
    On any exception, Ctrl-C included, the workers are stopped before it propagates.
    """
    import joblib
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
    with bar, parallel_backend(options, len(tasks)) as n_jobs:
        parallel = joblib.Parallel(
            n_jobs=n_jobs, return_as="generator_unordered", batch_size=1, pre_dispatch="n_jobs"
        )
        outputs = parallel(joblib.delayed(compute_shard)(t) for t in tasks)
        try:
            for result in outputs:
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
        finally:
            outputs.close()  # joblib aborts the tasks still running and stops the workers


def run_features(options: FeatureOptions) -> dict:
    """The features stage; see the module docstring.

    Returns
    -------
    dict
        ``planned`` (shards in the plan), ``mine`` (this task's share), ``already_complete``
        (shard names), ``computed`` (per-shard results of :func:`compute_shard`), ``written``
        (tracks in computed shards), ``skipped`` {reason: count}, ``failed`` {reason: count},
        ``padded`` (sorted real lengths of the short clips padded with silence, this task's shards),
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
    try:
        if todo:
            compute_shards(options, plan, todo, results, failed_reasons)
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
    summary = {
        "planned": len(plan.specs),
        "mine": len(mine),
        "already_complete": [s.name for s in complete],
        "computed": results,
        "written": sum(r["written"] for r in results),
        "skipped": {k: len(v) for k, v in plan.selection.skipped.items()},
        "failed": dict(failed_reasons),
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
