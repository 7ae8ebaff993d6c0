"""shards.cli: one-line user errors (exit 2), bugs with tracebacks, Ctrl-C (130), logging options."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from shards import FmaGenreError, ShardError
from shards.cli import (
    EXIT_FAILURES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_logging_arguments,
    progress_disabled,
    run_command,
    setup_logging,
)
from tests._faults import default_sigint

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, **kwargs
    )


# A tiny command built the way every command of the project is built.
_COMMAND = textwrap.dedent("""
    import argparse, logging, sys, time
    from shards import FmaGenreError
    from shards.cli import add_logging_arguments, run_command

    log = logging.getLogger("demo.command")

    def main(args):
        log.debug("debug detail")
        log.info("working on %s", args.what)
        log.warning("a warning")
        if args.what == "user-error":
            raise FmaGenreError("data/x.h5: not a shard. Rerun the features stage.")
        if args.what == "bug":
            return len(None)
        if args.what == "sleep":
            print("ready", flush=True)
            time.sleep(60)
        if args.what == "failures":
            return 1
        print("result line")
        return 0

    parser = argparse.ArgumentParser()
    parser.add_argument("what")
    add_logging_arguments(parser)
    sys.exit(run_command(main, parser.parse_args()))
""")


def test_user_error_is_one_line_and_exit_2():
    result = _python("-c", _COMMAND, "user-error")
    assert result.returncode == EXIT_USAGE == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: data/x.h5: not a shard. Rerun the features stage."
    assert result.stderr.count("error:") == 1


def test_bug_shows_its_traceback():
    result = _python("-c", _COMMAND, "bug")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "TypeError" in result.stderr


def test_bug_propagates_in_process():
    def main(args):
        raise TypeError("a programming error")

    with pytest.raises(TypeError, match="a programming error"):
        run_command(main, argparse.Namespace())


def test_exit_codes_returned_from_main():
    assert run_command(lambda args: None, argparse.Namespace()) == EXIT_OK
    assert run_command(lambda args: EXIT_FAILURES, argparse.Namespace()) == 1
    assert _python("-c", _COMMAND, "failures").returncode == 1


def test_shard_error_is_a_user_error_and_still_a_value_error(capsys):
    def main(args):
        raise ShardError("shards/x: damaged")

    assert issubclass(ShardError, FmaGenreError) and issubclass(ShardError, ValueError)
    assert run_command(main, argparse.Namespace()) == EXIT_USAGE
    assert capsys.readouterr().err == "error: shards/x: damaged\n"


def test_keyboard_interrupt_in_process_gives_130(capsys):
    def main(args):
        raise KeyboardInterrupt

    assert run_command(main, argparse.Namespace()) == EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_sigint_to_a_running_command_gives_130():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _COMMAND, "sleep"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "flags, shown, hidden",
    [
        ((), ["working on ok", "warning: a warning"], ["debug detail", "demo.command"]),
        (("--quiet",), ["warning: a warning"], ["working on ok", "debug detail"]),
        (("-q",), ["warning: a warning"], ["working on ok"]),
        (
            ("--verbose",),
            [
                "debug demo.command: debug detail",
                "info demo.command: working on ok",
                "warning demo.command: a warning",
            ],
            [],
        ),
        (("-v",), ["debug demo.command: debug detail"], []),
    ],
)
def test_quiet_and_verbose_change_what_is_logged(flags, shown, hidden):
    result = _python("-c", _COMMAND, "ok", *flags)
    assert result.returncode == 0
    for text in shown:
        assert text in result.stderr
    for text in hidden:
        assert text not in result.stderr
    assert result.stdout == "result line\n"  # results go to stdout whatever the level


def test_quiet_and_verbose_exclude_each_other():
    result = _python("-c", _COMMAND, "ok", "--quiet", "--verbose")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_setup_logging_is_idempotent_and_quiet_disables_progress(capsys):
    parser = argparse.ArgumentParser()
    add_logging_arguments(parser)
    root = logging.getLogger()
    try:
        setup_logging(parser.parse_args([]))
        setup_logging(parser.parse_args([]))
        assert [h.get_name() for h in root.handlers].count("fma-genre") == 1
        assert progress_disabled() is False
        setup_logging(parser.parse_args(["--quiet"]))
        assert progress_disabled() is True
        logging.getLogger("x").info("hidden")
        logging.getLogger("x").error("shown")
        assert capsys.readouterr().err == "error: shown\n"
    finally:
        for handler in list(root.handlers):
            if handler.get_name() == "fma-genre":
                root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def test_train_bad_shards_folder_is_one_line_exit_2(tmp_path):
    result = _python(
        "-m",
        "train",
        "fit",
        "--shards",
        str(tmp_path / "nowhere"),
        "--run",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nowhere" in lines[0]
