"""What every command shares: logging options, one logging setup, exit codes, one-line errors.

A command's entry point stays thin::

    def main(argv=None) -> int:
        parser = argparse.ArgumentParser(...)
        add_logging_arguments(parser)          # -q/--quiet, -v/--verbose
        args = parser.parse_args(argv)
        return run_command(_run, args)         # sets up logging, maps errors to exit codes

Exit codes (module constants):

====  ===================  =====================================================
code  constant             meaning
====  ===================  =====================================================
0     ``EXIT_OK``          the command did what was asked
1     ``EXIT_FAILURES``    it ran, but some items failed (``verify`` found damage,
                           ``predict`` had unreadable files); the output says which
2     ``EXIT_USAGE``       user error: a :class:`~shards.errors.FmaGenreError`
                           (bad input, data or settings), reported in one line
                           ``error: ...``; argparse also exits 2 on bad arguments
130   ``EXIT_INTERRUPTED`` interrupted (Ctrl-C / SIGINT); rerunning the same
                           command resumes where a command supports it
====  ===================  =====================================================

Any other exception is a bug: it propagates with its traceback (Python exits 1).

Logging: one setup per command (:func:`setup_logging`), to stderr. INFO lines
are the plain message; warnings and errors carry their level (``warning: ...``);
``--verbose`` adds DEBUG lines and names the logger of each line; ``--quiet``
keeps only warnings and errors. Results (tables, paths written) go to stdout
with ``print``; progress bars go to stderr (hide them with ``--quiet``, see
:func:`progress_disabled`). This module uses the standard library only.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from shards.errors import FmaGenreError

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_HANDLER_NAME = "fma-genre"


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``-q/--quiet`` and ``-v/--verbose`` (mutually exclusive) to ``parser``.

    With subcommands, add them to each subcommand's parser, so they are accepted
    after the subcommand name (``python -m train fit --quiet ...``).
    """
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q", "--quiet", action="store_true", help="print only warnings, errors and results; no progress bars"
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print debugging detail, each line with the module it comes from",
    )


def log_level(args: argparse.Namespace) -> int:
    """The root logging level asked for by ``args`` (INFO when neither flag is there)."""
    if getattr(args, "verbose", False):
        return logging.DEBUG
    if getattr(args, "quiet", False):
        return logging.WARNING
    return logging.INFO


class _Formatter(logging.Formatter):
    """Plain message for INFO; ``level: message`` above; logger names when verbose."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)  # the message, plus any traceback attached with exc_info
        if self.verbose:
            return f"{record.levelname.lower()} {record.name}: {text}"
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at each record (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; always stderr
        pass


def setup_logging(args: argparse.Namespace | None = None) -> logging.Handler:
    """Send log records to stderr at the level ``args`` asks for (see module doc).

    Idempotent: calling it again (tests run several commands in one process)
    replaces the handler it installed before, never adds a second one.

    Returns
    -------
    logging.Handler
        The installed handler on the root logger.
    """
    level = log_level(args) if args is not None else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_Formatter(verbose=level <= logging.DEBUG))
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries' own debug chatter (matplotlib font search, PIL) stays out of --verbose.
    for noisy in ("matplotlib", "PIL", "h5py", "urllib3", "asyncio", "fsspec"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))
    return handler


def progress_disabled() -> bool:
    """``disable=`` for tqdm: True when the command runs with ``--quiet``."""
    return logging.getLogger().getEffectiveLevel() > logging.INFO


def run_command(main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Set up logging from ``args``, run ``main(args)`` and return its exit code.

    - ``main`` returns an exit code (None counts as :data:`EXIT_OK`);
    - a :class:`FmaGenreError` becomes one line ``error: <message>`` on stderr and
      :data:`EXIT_USAGE` (2);
    - ``KeyboardInterrupt`` becomes a short message and :data:`EXIT_INTERRUPTED`
      (130); ``main`` may catch it to log how far it got, then re-raise;
    - every other exception propagates with its traceback: it is a bug.
    """
    setup_logging(args)
    try:
        code = main(args)
    except FmaGenreError as exc:
        sys.stdout.flush()
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return EXIT_OK if code is None else int(code)
