"""`python -m preprocess COMMAND` in real processes: exit codes 0, 1 (failures found), 2 (user error)."""

from __future__ import annotations

import subprocess

import pytest

from tests._shardset import make_shard_set


def _run(python, env, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, "-m", "preprocess", *argv], env=env, capture_output=True, text=True, timeout=120
    )


def _one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for needle in needles:
        assert needle in errors[0], (needle, done.stderr)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verify-me")
    make_shard_set(folder, {"train": [6, 5], "validation": [4], "test": [4]})
    return folder


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["features", "--out", "OUT", "--fma-dir", "NOWHERE"], ["NOWHERE", "make download"]),
        (["features", "--out", "OUT", "--task-index", "3", "--num-tasks", "3"], ["--task-index"]),
        (["features", "--out", "OUT", "--backend", "dask"], ["--scheduler"]),
        (["finalize", "OUT"], ["plan.json", "make features"]),
        (["verify", "NOWHERE"], ["NOWHERE", "no such folder"]),
        (["slurm", "--out", "OUT", "--cpus-per-task", "0"], ["--cpus-per-task"]),
        (["download", "--fma-dir", "OUT", "--sums", "NOWHERE"], ["NOWHERE", "sums file"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(argv, needles, tmp_path, python, subprocess_env):
    paths = {"OUT": str(tmp_path / "out"), "NOWHERE": str(tmp_path / "nowhere")}
    done = _run(python, subprocess_env, *[paths.get(a, a) for a in argv])
    _one_line_error(done, *[paths.get(n, n) for n in needles])


def test_verify_exits_0_when_good_and_1_naming_the_damage(shard_set, tmp_path, python, subprocess_env):
    done = _run(python, subprocess_env, "verify", str(shard_set))
    assert done.returncode == 0 and done.stdout.strip() == f"verify: {shard_set} OK", done.stderr
    (shard_set / "manifest.json").rename(tmp_path / "manifest.json")
    try:
        damaged = _run(python, subprocess_env, "verify", str(shard_set))
    finally:
        (tmp_path / "manifest.json").rename(shard_set / "manifest.json")
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr
    assert "manifest.json" in damaged.stderr and damaged.stdout == ""


def test_quiet_keeps_results_only_and_verbose_names_the_logger(shard_set, python, subprocess_env):
    quiet = _run(python, subprocess_env, "verify", str(shard_set), "--quiet")
    assert quiet.returncode == 0 and quiet.stdout.strip() == f"verify: {shard_set} OK"
    assert quiet.stderr == ""  # no progress bar, no info line
    normal = _run(python, subprocess_env, "verify", str(shard_set))
    assert "verify" in normal.stderr  # the progress bar, on stderr
    done = _run(
        python,
        subprocess_env,
        "features",
        "--out",
        str(shard_set / "x"),
        "--shard-index",
        "0",
        "--fma-dir",
        str(shard_set / "nowhere"),
        "-v",
    )
    assert "warning preprocess.options: --shard-index is deprecated" in done.stderr, done.stderr
    assert done.returncode == 2
