"""The features stage's options: one dataclass, built once from the command line.

``python -m preprocess features`` and ``python -m preprocess slurm`` take the same
dataset and plan options (:func:`add_plan_arguments`); ``features`` adds how this
process runs them (:func:`add_run_arguments`). :meth:`FeatureOptions.from_args` turns
either command line into one :class:`FeatureOptions`, which the local, dask and SLURM
paths all take. SLURM array tasks get the plan options back as command-line arguments
(:meth:`FeatureOptions.plan_argv`), so every task computes the same plan.

To add an option: a field here, its flag in :func:`add_plan_arguments` (every task of
a run must agree on it) or :func:`add_run_arguments` (this process only), and, for a
plan option, its flag in :meth:`FeatureOptions.plan_argv`; tests/test_options.py
checks the round trip.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from preprocess import fma
from preprocess.assign import DEFAULT_SHARD_SIZE
from preprocess.errors import FeaturesError
from preprocess.metadata import DEFAULT_MIN_DURATION, DEFAULT_TARGET, TARGETS
from preprocess.recipe import RECIPES, Recipe, same_waveform

DEFAULT_TRACK_TIMEOUT = 120.0
BACKENDS = ("local", "dask")
COMPRESSIONS = ("gzip", "lzf")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureOptions:
    """Everything the features stage needs to know, as plain data.

    Attributes
    ----------
    fma_dir : Path
        Folder holding ``fma_metadata/`` and ``fma_<subset>/`` (or ``fma_<subset>.zip``).
    out : Path
        The shard set folder (created).
    subset : str
        FMA subset: small, medium or large (nested).
    recipe : Recipe
        The feature recipe of the ``mel`` image (``--recipes NAME[,FINE]``' first name, one of
        ``preprocess.recipe.RECIPES``).
    fine : Recipe or None
        A second, finer image of the same decoded samples, stored as ``mel_fine`` (the second
        name of ``--recipes``, e.g. ``reference,fine``); None: only ``mel``.
    shard_size : int
        Tracks per shard (one shard is one task).
    skip_known_bad : bool
        Skip FMA's known-bad track ids.
    min_duration : float or None
        Skip tracks whose tracks.csv duration is <= this many seconds; None keeps all.
    track_timeout : float or None
        Seconds one track may take before it is recorded as failed; None: no limit.
    compression : str or None
        HDF5 compression of the images (None: uncompressed, memory-mappable).
    audio_zip : Path or None
        Read the MP3s from this zip (FMA's ``fma_<subset>.zip``); None: the unpacked tree
        ``fma_<subset>/`` if there is one, else ``fma_<subset>.zip`` (preprocess.audio_source).
        Not part of the plan: a tree and its zip make the same shards.
    max_failure_fraction : float
        Stop early when more than this fraction of tracks fails.
    jobs : int
        Worker processes of the local backend (-1: all cores).
    task_index, num_tasks : int
        This process computes the shards at positions k with ``k % num_tasks == task_index``
        (an array task's share; 0 and 1: every shard).
    force : bool
        Recompute every shard, replacing a shard set made with other settings.
    backend : str
        ``local`` (a process pool) or ``dask`` (an existing cluster at ``scheduler``).
    scheduler : str or None
        The dask scheduler: ``tcp://host:port`` or a scheduler-file path.
    finalize : bool
        Write manifest.json at the end when every shard exists.
    progress : bool
        Show a progress bar (stderr).
    keep_silence : bool
        Store clips that are digital silence (an image at the dB floor) instead of recording
        them as failed (``digital silence``).
    target : str
        What is selected and stored as labels (``preprocess.metadata.TARGETS``): ``genre_top``
        (the 16 top-level genres, the reference's) or ``genres_all`` (every track with a genre,
        with a multi-hot row over genres.csv and its top-level genre or -1).
    """

    fma_dir: Path
    out: Path
    subset: str = "large"
    recipe: Recipe = field(default_factory=lambda: RECIPES["reference"])
    fine: Recipe | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    skip_known_bad: bool = True
    min_duration: float | None = DEFAULT_MIN_DURATION
    track_timeout: float | None = DEFAULT_TRACK_TIMEOUT
    compression: str | None = None
    audio_zip: Path | None = None
    max_failure_fraction: float = 0.5
    jobs: int = -1
    task_index: int = 0
    num_tasks: int = 1
    force: bool = False
    backend: str = "local"
    scheduler: str | None = None
    finalize: bool = True
    progress: bool = True
    keep_silence: bool = False
    target: str = DEFAULT_TARGET

    def __post_init__(self) -> None:
        object.__setattr__(self, "fma_dir", Path(self.fma_dir))
        object.__setattr__(self, "out", Path(self.out))
        if self.audio_zip is not None:
            object.__setattr__(self, "audio_zip", Path(self.audio_zip))
        problems = validation_problems(self)
        if problems:
            raise FeaturesError("; ".join(problems))

    def replace(self, **changes) -> FeatureOptions:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FeatureOptions:
        """The options of a parsed command line (either command's; absent flags keep their defaults)."""
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
        given["recipe"], given["fine"] = parse_recipes(args.recipes)
        given["min_duration"] = None if args.min_duration < 0 else args.min_duration
        given["track_timeout"] = args.track_timeout or None
        for message in getattr(args, "deprecated", []):
            log.warning(message)
        return cls(**given)

    def plan_argv(self) -> list[str]:
        """The plan options but --fma-dir, --subset, --out as ``preprocess features`` arguments.

        For the tasks of an array job (cluster/features-array.sbatch takes those three first).
        """
        argv = [
            "--recipes",
            self.recipe.name if self.fine is None else f"{self.recipe.name},{self.fine.name}",
            "--shard-size",
            str(self.shard_size),
            "--min-duration",
            repr(-1.0 if self.min_duration is None else self.min_duration),
            "--track-timeout",
            repr(self.track_timeout or 0.0),
            "--max-failure-fraction",
            repr(self.max_failure_fraction),
        ]
        if not self.skip_known_bad:
            argv.append("--no-skip-known-bad")
        if self.keep_silence:
            argv.append("--keep-silence")
        if self.compression:
            argv += ["--compression", self.compression]
        if self.target != DEFAULT_TARGET:
            argv += ["--target", self.target]
        if self.audio_zip is not None:
            argv += ["--audio-zip", str(self.audio_zip.resolve())]
        return argv


def validation_problems(options: FeatureOptions) -> list[str]:
    """What is wrong with ``options``, each naming its flag (empty: all good)."""
    problems = []
    if options.subset not in fma.SUBSETS:
        problems.append(f"--subset must be one of {', '.join(fma.SUBSETS)}, got {options.subset!r}")
    if options.shard_size < 1:
        problems.append(f"--shard-size must be >= 1, got {options.shard_size}")
    if not 0 <= options.task_index < options.num_tasks:
        problems.append(
            f"need 0 <= --task-index < --num-tasks, got {options.task_index} and {options.num_tasks}"
        )
    if not 0 <= options.max_failure_fraction <= 1:
        problems.append(f"--max-failure-fraction must lie in [0, 1], got {options.max_failure_fraction}")
    if options.track_timeout is not None and options.track_timeout < 0:
        problems.append(f"--track-timeout must be >= 0, got {options.track_timeout}")
    if options.backend not in BACKENDS:
        problems.append(f"--backend must be one of {', '.join(BACKENDS)}, got {options.backend!r}")
    if options.backend == "dask" and not options.scheduler:
        problems.append("--backend dask needs --scheduler tcp://host:port or a scheduler-file path")
    if options.fine is not None and not same_waveform(options.recipe, options.fine):
        problems.append(
            f"--recipes: {options.fine.name!r} prepares clips unlike {options.recipe.name!r} (duration, "
            f"sample rate): the second image must come from the same decoded samples"
        )
    if options.target not in TARGETS:
        problems.append(f"--target must be one of {', '.join(TARGETS)}, got {options.target!r}")
    if options.compression not in (None, *COMPRESSIONS):
        problems.append(
            f"--compression must be one of {', '.join(COMPRESSIONS)}, got {options.compression!r}"
        )
    return problems


def parse_recipes(text: str) -> tuple[Recipe, Recipe | None]:
    """``--recipes`` ("reference" or "reference,fine") -> the ``mel`` recipe and the ``mel_fine`` one.

    Raises
    ------
    FeaturesError
        An unknown name, more than two, or the same one twice.
    """
    names = [n.strip() for n in text.split(",")]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or not 1 <= len(names) <= 2 or len(set(names)) != len(names):
        raise FeaturesError(
            f"--recipes {text!r}: give one recipe, or two (the image and a finer one from the same "
            f"decode, e.g. reference,fine), each one of {', '.join(sorted(RECIPES))}"
        )
    return RECIPES[names[0]], RECIPES[names[1]] if len(names) == 2 else None


def worker_count(options: FeatureOptions, tasks: int) -> int:
    """Processes of the local pool: --jobs (or every core), never more than there are tasks."""
    return max(1, min(options.jobs if options.jobs > 0 else (os.cpu_count() or 1), tasks))


# --------------------------------------------------------------------------- command line


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset and plan options: what every task of one shard set must agree on."""
    parser.add_argument(
        "--fma-dir",
        default="data",
        help="folder holding fma_metadata/ and fma_<subset>/ "
        "(default: data; for SLURM, as the compute nodes see it)",
    )
    parser.add_argument(
        "--subset",
        default="large",
        choices=fma.SUBSETS,
        help="FMA subset (nested: medium = small + medium tracks; default: large)",
    )
    parser.add_argument("--out", required=True, help="shard set folder (created)")
    parser.add_argument(
        "--recipes",
        default="reference",
        metavar="NAME[,FINE]",
        help="feature recipe of the image (reference = the reference project's), optionally a second, "
        "finer image made from the same decode and stored beside it as mel_fine: reference,fine "
        f"(known: {', '.join(sorted(RECIPES))}; default %(default)s)",
    )
    parser.add_argument("--recipe", dest="recipes", help=argparse.SUPPRESS)  # the older name
    parser.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="tracks per shard (one shard = one task; default %(default)s)",
    )
    parser.add_argument(
        "--min-duration",
        type=float,
        default=DEFAULT_MIN_DURATION,
        help="skip tracks whose tracks.csv duration is <= this many seconds "
        "(negative: keep all; default %(default)s)",
    )
    parser.add_argument(
        "--no-skip-known-bad",
        dest="skip_known_bad",
        action="store_false",
        help="also try FMA's known-bad ids (skipped by default)",
    )
    parser.add_argument(
        "--track-timeout",
        type=float,
        default=DEFAULT_TRACK_TIMEOUT,
        help="seconds one track may take before it is recorded as failed (0: no limit; default %(default)s)",
    )
    parser.add_argument(
        "--compression",
        default=None,
        choices=COMPRESSIONS,
        help="compress images (the training side can then not memory-map them)",
    )
    parser.add_argument(
        "--audio-zip",
        default=None,
        metavar="ZIP",
        help="read the MP3s from this zip (FMA's fma_<subset>.zip) instead of the unpacked "
        "tree (default: FMA_DIR/fma_<subset>/, else FMA_DIR/fma_<subset>.zip)",
    )
    parser.add_argument(
        "--max-failure-fraction",
        type=float,
        default=0.5,
        help="stop early when more than this fraction of tracks fails (default %(default)s)",
    )
    parser.add_argument(
        "--keep-silence",
        action="store_true",
        help="store clips that are digital silence (default: recorded as failed)",
    )
    parser.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        choices=TARGETS,
        help="genre_top: tracks with one of the 16 top-level genres (the reference's; default); "
        "genres_all: every track with a genre, with a multi-hot label over all of genres.csv "
        "(multi-label training: python -m train fit --task multilabel)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How this process runs the plan: workers, backend, its array task's share, resumption."""
    parser.add_argument("--jobs", type=int, default=-1, help="worker processes (default: all cores)")
    parser.add_argument(
        "--task-index",
        type=int,
        default=0,
        metavar="I",
        help="compute only the shards at positions k with k %% N == I (this array task's share; default 0)",
    )
    parser.add_argument(
        "--num-tasks",
        type=int,
        default=1,
        metavar="N",
        help="number of array tasks sharing the shards (default 1: this process does all)",
    )
    parser.add_argument(
        "--shard-index",
        dest="task_index",
        type=int,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        action=_deprecated_alias("--task-index"),
    )
    parser.add_argument(
        "--num-shards",
        dest="num_tasks",
        type=int,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        action=_deprecated_alias("--num-tasks"),
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="recompute every shard, replacing a shard set made with other settings",
    )
    parser.add_argument(
        "--backend", default="local", choices=BACKENDS, help="local process pool, or an existing dask cluster"
    )
    parser.add_argument(
        "--scheduler", default=None, help="dask scheduler: tcp://host:port or a scheduler-file path"
    )
    parser.add_argument(
        "--no-finalize", dest="finalize", action="store_false", help="do not write manifest.json at the end"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _deprecated_alias(new_flag: str) -> type[argparse.Action]:
    """An argparse action storing like ``new_flag`` and warning that the old name will go."""

    class DeprecatedAlias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            # Warned by FeatureOptions.from_args, once logging is set up.
            namespace.deprecated = [
                *getattr(namespace, "deprecated", []),
                (
                    f"{option_string} is deprecated and will be removed: use {new_flag} (same meaning: "
                    f"this array task's share of the shards)"
                ),
            ]
            setattr(namespace, self.dest, values)

    return DeprecatedAlias
