"""``python -m preprocess <command>``: a thin dispatcher.

Each command lives in its own module, which defines
``add_arguments(parser)`` and ``main(args) -> int`` and is imported only when used.
Every command takes ``--quiet``/``--verbose`` and exits as :mod:`shards.cli` says:
0 done, 1 it ran but found failures (verify: damaged shards; finalize or a whole
features run: shards missing), 2 a user error (one line ``error: ...``), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shards.cli import add_logging_arguments, run_command

COMMANDS = {
    "features": ("preprocess.driver", "decode tracks into HDF5 shards (resumable, parallel)"),
    "finalize": ("preprocess.finalize", "write manifest.json once every shard exists"),
    "verify": ("preprocess.verify", "check a shard set: readable, finite, checksums match"),
    "download": ("preprocess.download", "fetch, check and unpack FMA's zips"),
    "slurm": ("preprocess.slurm", "submit the features stage as a SLURM array job"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m preprocess",
        description="The features stage of fma-genre. `python -m preprocess COMMAND --help` for details.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, help_text) in COMMANDS.items():
        if name == wanted:
            module = importlib.import_module(module_name)
            p = sub.add_parser(
                name,
                help=help_text,
                description=(module.__doc__ or help_text).strip(),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            add_logging_arguments(p)
            p.set_defaults(_main=module.main)
        else:
            sub.add_parser(name, help=help_text)
    args = parser.parse_args(argv)
    return run_command(args._main, args)


if __name__ == "__main__":
    sys.exit(main())
