"""CPU threads of the model in this process: ``--threads N`` of ``fit``, ``test``, ``predict``, ``embed``.

torch's default is one intra-op thread per core of the machine, and its OpenMP threads wait on
each other at every layer. On a machine shared with other work that collapses: with one other
process busy on one of two cores, the seed CNN trained ~4x slower with 2 threads than with 1
(docs/training.md, ``bench/threads.py``). So the thread count is an option, and its default is
what this process may use: ``OMP_NUM_THREADS`` when the environment sets it (torchrun sets 1 for
each of several processes), else the CPUs it may run on (its CPU affinity: a SLURM allocation or
``taskset`` is respected, where torch would count every core of the node).
"""

from __future__ import annotations

import argparse
import os

from train.config import ConfigError


def available_cpus() -> int:
    """The CPUs this process may run on (``sched_getaffinity``; all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` if set to a positive integer, else :func:`available_cpus`."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else available_cpus()


def add_threads_argument(parser: argparse.ArgumentParser, default_text: str | None = None) -> None:
    """Add ``--threads N`` (stored as ``args.threads``, None when not given); ``default_text`` says
    what the default is (else :func:`default_threads`'s rule)."""
    default_text = default_text or (
        f"what this process may use: OMP_NUM_THREADS if set, else its CPU affinity ({available_cpus()} here)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of the model in this process (torch.set_num_threads); default: "
        + default_text
        + ". On a machine shared with other busy processes, fewer threads than cores is often faster: "
        "see docs/training.md",
    )


def resolve_threads(threads: int | None, default: int | None = None) -> int:
    """``threads``, else ``default``, else :func:`default_threads` (ConfigError below 1)."""
    n = threads if threads is not None else (default if default is not None else default_threads())
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    return n


def apply_threads(threads: int | None, default: int | None = None) -> int:
    """Set torch's intra-op threads of this process to :func:`resolve_threads`'s count; returns it."""
    import torch

    n = resolve_threads(threads, default)
    torch.set_num_threads(n)
    return n
