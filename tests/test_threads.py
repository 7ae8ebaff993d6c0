"""``--threads N`` of fit, test, predict and embed: the default follows the CPUs this process may use."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests._shardset import fit_argv, make_shard_set
from train.__main__ import build_parser, main

_PROBE = """
import json, os, sys, torch
from train.threads import apply_threads
os.sched_setaffinity(0, {0})  # as in a SLURM allocation of one CPU on a bigger machine
default = apply_threads(None)
out = {"default": default, "torch_default": torch.get_num_threads()}
out["given"] = apply_threads(3)
out["torch_given"] = torch.get_num_threads()
print(json.dumps(out))
"""


def _probe(python: str, env: dict) -> dict:
    done = subprocess.run(
        [python, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_default_is_the_cpu_affinity_and_a_given_count_is_set(python, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "OMP_NUM_THREADS"}
    assert _probe(python, env) == {"default": 1, "torch_default": 1, "given": 3, "torch_given": 3}


def test_omp_num_threads_set_by_the_environment_is_the_default(python, subprocess_env):
    """torchrun sets OMP_NUM_THREADS=1 for each of several processes: that stays the default."""
    probe = _PROBE.replace("os.sched_setaffinity(0, {0})", "pass")
    done = subprocess.run(
        [python, "-c", probe],
        env={**subprocess_env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1])["default"] == 1


@pytest.mark.parametrize("command", ["fit", "test", "predict", "embed"])
def test_every_model_command_takes_threads(command):
    args = {
        "fit": ["fit", "--shards", "s", "--run", "r"],
        "test": ["test", "--shards", "s", "--run", "r"],
        "predict": ["predict", "--run", "r", "a.mp3"],
        "embed": ["embed", "--run", "r", "a.mp3", "--out", "e.h5"],
    }[command]
    assert build_parser().parse_args([*args, "--threads", "2"]).threads == 2
    assert build_parser().parse_args(args).threads is None


def test_fit_runs_with_the_threads_asked_for_and_refuses_zero(tmp_path, python, subprocess_env, capsys):
    shards_dir = tmp_path / "shards"
    make_shard_set(shards_dir, {"train": [16], "validation": [8], "test": [8]}, num_classes=2, seed=1)
    assert main([*fit_argv(shards_dir, tmp_path / "bad"), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    code = (
        "import sys, torch; from train.__main__ import main; "
        f"code = main({[*fit_argv(shards_dir, tmp_path / 'run'), '--epochs', '1', '--threads', '1']!r}); "
        "print('threads', torch.get_num_threads()); sys.exit(code)"
    )
    done = subprocess.run(
        [python, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads 1" in done.stdout
