"""Genres of whole audio files: ``python -m train predict --run RUN FILES/FOLDERS [...]``.

Each file is decoded window by window (29.5 s windows of the recipe stored with
the model, every ``--hop`` seconds rounded to whole frames, default half a window,
or a whole window for a chunk model; see :mod:`preprocess.windows` for the plan
and the short-file policy); each window's image equals the features stage's image
of that excerpt, the windows of a file go through the model in batches (a chunk
model scores an image as the mean over its chunks), and the file's probabilities
are the mean of its windows' probabilities (softmax; for a multi-label model one
sigmoid per genre, and the top-level genre those imply is named too). Windows of
digital silence are left out (a file that is all silence fails). ``--first-window``
scores only the first window (what the features stage stores for a training track).

Folders are searched recursively for audio files (by extension); files named on
the command line are used whatever their extension. Decoding and images run in
``--jobs`` worker processes (preprocess.supervise), the model in this process. A file
that cannot be read is one row with its error and the run goes on: so is a file whose
decoder crashes its process twice (``decoder crashed: SIGSEGV``) or runs past
``--timeout`` (``timed out after 600 s``: the process is killed from outside). The exit
status is 1 if any file failed, 0 otherwise (2 for bad arguments or a bad model).

Results go to ``--output FILE.csv`` or ``FILE.jsonl`` (columns in
:mod:`train.outputs`), or else one line per file on stdout.

Examples:
  python -m train predict --run runs/seed song.mp3
  python -m train predict --run runs/seed music/ --output results.csv --jobs 4
  python -m train predict --onnx model.onnx song.mp3 --per-window --output song.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from shards.cli import EXIT_FAILURES, EXIT_OK, add_logging_arguments, progress_disabled, run_command
from shards.errors import FmaGenreError
from train.outputs import TrackPrediction, check_result_path, format_line, write_results
from train.scorers import Scorer, is_chunked
from train.threads import add_threads_argument, default_threads, resolve_threads

log = logging.getLogger(__name__)

#: Seconds one file may take to decode (``--timeout``): a 60-minute MP3 takes ~10 s on one core.
DEFAULT_FILE_TIMEOUT = 600.0
#: Extensions searched for in folders (what libsndfile with mpg123 decodes).
AUDIO_EXTENSIONS = frozenset({".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".au"})


class PredictError(FmaGenreError, ValueError):
    """Bad inputs or options for ``predict`` / ``embed``."""


@dataclass(frozen=True)
class PredictOptions:
    """How files are cut and scored.

    Attributes
    ----------
    hop_s : float or None
        Seconds between window starts, rounded to whole frames (None: the model's default,
        :func:`with_default_hop`).
    first_only : bool
        Score only the first window of each file.
    batch_size : int
        Windows per model call.
    jobs : int
        Worker processes decoding and making images.
    timeout_s : float or None
        Seconds one file may take in its worker before it is killed and the file failed
        (None: no limit).
    share_frames : bool
        Image the frames overlapping windows share once (the same images; False only to
        measure what that saves: ``bench/predict.py``).
    """

    hop_s: float | None = None
    first_only: bool = False
    batch_size: int = 16
    jobs: int = 1
    timeout_s: float | None = DEFAULT_FILE_TIMEOUT
    share_frames: bool = True

    def validate(self) -> None:
        if self.hop_s is not None and not self.hop_s > 0:
            raise PredictError(f"--hop must be a positive number of seconds, got {self.hop_s}")
        if self.batch_size < 1:
            raise PredictError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.jobs < 1:
            raise PredictError(f"--jobs must be >= 1, got {self.jobs}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise PredictError(f"--timeout must be > 0 seconds (or 0: no limit), got {self.timeout_s}")


@dataclass
class Timings:
    """Where a run's time went (decode, image and CPU times are summed over the pool's processes;
    ``cpu_s`` is the pool's CPU time plus the model's)."""

    files: int = 0
    audio_s: float = 0.0
    windows: int = 0
    decode_s: float = 0.0
    image_s: float = 0.0
    model_s: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    failed: list = field(default_factory=list)


def find_audio_files(inputs: list[str | os.PathLike]) -> list[Path]:
    """The files to score: files as given, folders searched recursively (sorted) by extension.

    Raises
    ------
    PredictError
        If an input does not exist or nothing is found.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
            if not found:
                log.warning(
                    "%s: no audio files (%s) in this folder", path, ", ".join(sorted(AUDIO_EXTENSIONS))
                )
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise PredictError(f"{path}: no such file or folder")
    if not files:
        raise PredictError(f"no audio files found in {', '.join(map(str, inputs))}")
    return files


def score_windows(scorer: Scorer, images: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (W, K) and embeddings (W, D) of one file's window images (W, n_mels, n_frames)."""
    probabilities, embeddings = [], []
    for start in range(0, len(images), batch_size):
        p, e = scorer(images[start : start + batch_size])
        probabilities.append(p)
        embeddings.append(e)
    return np.concatenate(probabilities), np.concatenate(embeddings)


def _window_images_in_order(files: list[Path], recipe: dict, options: PredictOptions) -> Iterator:
    """``(WindowImages or None, error or None)`` per file, in order, decoded in worker processes.

    Fresh interpreters (no torch state inherited), results in input order, at most 2 files per
    process in flight so memory stays bounded; a file whose worker dies twice or runs past the
    time limit comes back as its error (``decoder crashed: SIGSEGV``, ``timed out after N s``).
    """
    from preprocess.supervise import Failed, ordered_map

    args = (recipe, options.hop_s, options.first_only, options.share_frames)
    jobs = min(options.jobs, len(files))
    paths = (str(path) for path in files)
    prepare = ("preprocess.windows:prepare", (recipe,))  # each worker's one-time set-up, not timed
    work = "preprocess.windows:file_window_images"
    for result in ordered_map(work, paths, args, jobs, options.timeout_s, setup=prepare):
        yield (None, result.reason) if isinstance(result, Failed) else result


def with_default_hop(options: PredictOptions, scorer: Scorer) -> PredictOptions:
    """``options`` with ``hop_s`` set: ``--hop``, or the model's default: half a window, or a whole
    window for a chunk model (its chunks already cover every part of a window)."""
    if options.hop_s is not None:
        return options
    from preprocess.recipe import Recipe
    from preprocess.windows import default_hop_s

    whole = is_chunked(scorer)
    return dataclasses.replace(options, hop_s=default_hop_s(Recipe.from_dict(scorer.recipe), whole))


def describe_windows(options: PredictOptions, scorer: Scorer) -> str:
    """``windows of 29.5 s every 14.75 s (64 frames)`` (at 44.1 kHz), or ``first window only``."""
    from preprocess.recipe import Recipe
    from preprocess.windows import describe_hop

    if options.first_only:
        return "first window only"
    return describe_hop(Recipe.from_dict(scorer.recipe), with_default_hop(options, scorer).hop_s)


def predict_tracks(
    files: list[Path],
    scorer: Scorer,
    options: PredictOptions = PredictOptions(),
    timings: Timings | None = None,
) -> Iterator[TrackPrediction]:
    """Score each file (see the module doc), in input order, with a progress bar on stderr.

    Parameters
    ----------
    files : list of Path
    scorer : Scorer
    options : PredictOptions
    timings : Timings, optional
        Filled in with where the time went.

    Yields
    ------
    TrackPrediction
        With ``probabilities`` (K,) and ``embedding`` (D,) the means over the used windows,
        or ``error`` set.
    """
    from tqdm import tqdm

    options.validate()
    options = with_default_hop(options, scorer)
    timings = timings if timings is not None else Timings()
    start = time.perf_counter()
    stream = _window_images_in_order(files, scorer.recipe, options)
    with tqdm(
        total=len(files), desc="predict", unit="file", disable=progress_disabled(), leave=False, mininterval=1
    ) as bar:
        for path, (windows, error) in zip(files, stream, strict=True):
            timings.files += 1
            bar.update(1)
            if windows is None:
                timings.failed.append(str(path))
                yield TrackPrediction(path=str(path), error=error)
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            probabilities, embeddings = score_windows(scorer, windows.images, options.batch_size)
            timings.model_s += time.perf_counter() - t0
            timings.cpu_s += windows.cpu_s + time.process_time() - c0
            timings.decode_s += windows.decode_s
            timings.image_s += windows.image_s
            timings.audio_s += windows.seconds
            timings.windows += len(windows.starts_s)
            mean = probabilities.mean(axis=0)
            yield TrackPrediction(
                path=str(path),
                probabilities=mean,
                window_starts_s=windows.starts_s,
                window_probabilities=probabilities,
                embedding=embeddings.mean(axis=0),
                top_level_genre=scorer.task.implied_top_genre(mean),
            )
    timings.wall_s = time.perf_counter() - start


def load_scorer(args: argparse.Namespace) -> Scorer:
    """The model named by ``--run`` (with ``--checkpoint``, ``--device``) or ``--onnx``."""
    from train.scorers import OnnxScorer, TorchScorer

    if (args.run is None) == (args.onnx is None):
        raise PredictError("give exactly one of --run RUN (a checkpoint) or --onnx FILE (an exported model)")
    # The --jobs decoding processes take their cores: the model gets what is left (at least 1).
    threads = resolve_threads(args.threads, default=max(1, default_threads() - args.jobs))
    if args.onnx is not None:
        return OnnxScorer(args.onnx, threads=threads)
    from train.checkpoint import load_checkpoint

    source = Path(args.run) / args.checkpoint
    return TorchScorer(load_checkpoint(source), args.device, source=str(source), threads=threads)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run/--checkpoint/--device`` or ``--onnx``, and how files are cut (shared with ``embed``)."""
    parser.add_argument("--run", help="run folder holding the checkpoint")
    parser.add_argument(
        "--checkpoint", default="best.pt", help="checkpoint file name in the run folder (default: best.pt)"
    )
    parser.add_argument(
        "--onnx",
        metavar="FILE",
        help="an exported model (python -m train export) instead of --run; runs with onnxruntime",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("auto", "cuda", "cpu"),
        help="where a --run model runs (default: cpu)",
    )
    parser.add_argument(
        "--hop",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between window starts, rounded to whole frames of the recipe (default: half a "
        "window, 64 frames = 14.75 s; a whole window for a chunk model)",
    )
    parser.add_argument(
        "--first-window",
        action="store_true",
        help="score only the first window of each file (the old behaviour)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="processes decoding files (default: the number of cores, at most 8)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_FILE_TIMEOUT,
        metavar="SECONDS",
        help="seconds one file may take to decode before its worker is killed and its row says "
        f"'timed out after N s' (0: no limit; default {DEFAULT_FILE_TIMEOUT:g})",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="windows per model call (default: 16)")
    add_threads_argument(
        parser,
        "what this process may use (OMP_NUM_THREADS if set, else its CPU affinity) less the "
        "--jobs decoding processes, at least 1",
    )
    parser.add_argument("--model-threads", dest="threads", type=int, help=argparse.SUPPRESS)  # the old name
    add_logging_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE_OR_FOLDER",
        help="audio files, and folders searched recursively for audio files",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--output",
        metavar="FILE",
        help="write results to FILE.csv or FILE.jsonl (default: one line per file on stdout)",
    )
    parser.add_argument("--top", type=int, default=3, help="genres per file (default: 3)")
    parser.add_argument("--per-window", action="store_true", help="also give each window's probabilities")


def options_from_args(args: argparse.Namespace) -> PredictOptions:
    options = PredictOptions(
        hop_s=args.hop,
        first_only=args.first_window,
        batch_size=args.batch_size,
        jobs=args.jobs,
        timeout_s=args.timeout or None,
    )
    options.validate()
    return options


def main(args: argparse.Namespace) -> int:
    """The ``predict`` command; exit status 1 if any file failed."""
    if args.top < 1:
        raise PredictError(f"--top must be >= 1, got {args.top}")
    output = check_result_path(args.output) if args.output else None
    options = options_from_args(args)
    files = find_audio_files(args.inputs)
    scorer = load_scorer(args)
    log.info("%d files, %s, %s", len(files), scorer.description, describe_windows(options, scorer))
    timings = Timings()
    results = []
    for result in predict_tracks(files, scorer, options, timings):
        if result.error is not None:
            log.error("%s: %s", result.path, result.error)
        if output is None:
            print(format_line(result, scorer.class_names, args.top, args.per_window), flush=True)
        results.append(result)
    if output is not None:
        write_results(
            output, results, scorer.class_names, args.top, args.per_window, scorer.task.implies_top_genre
        )
        print(f"{output}: {len(results)} files, {len(timings.failed)} failed")
    if timings.failed:
        log.warning("%d of %d files could not be scored", len(timings.failed), len(files))
    return EXIT_FAILURES if timings.failed else EXIT_OK


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="python -m train.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(_parser)
    raise SystemExit(run_command(main, _parser.parse_args()))
