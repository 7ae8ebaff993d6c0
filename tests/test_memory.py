"""keep_freed_memory: a large buffer freed and allocated again costs no new page faults."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import json, resource, sys
import torch
from train.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults_of_one_round():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):  # what a training step does: 64 MiB buffers made, written and freed
        a = torch.ones(16 * 2**20)
        b = a * 2.0
        del a, b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
# The first rounds grow the heap; how many it takes depends on what else is allocated between
# the buffers (2 here at 1 thread, 3 at 2 or 8 threads). After that, the fewest of six rounds.
faults_of_one_round(), faults_of_one_round()
print(json.dumps({"applied": applied, "faults": min(faults_of_one_round() for _ in range(6))}))
"""


def _probe(python: str, env: dict, mode: str) -> dict:
    done = subprocess.run(
        [python, "-c", _PROBE, mode], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_freed_buffers_are_reused_without_new_page_faults(python, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k != "FMA_GENRE_MALLOC"}
    plain = _probe(python, env, "plain")
    kept = _probe(python, env, "keep")
    # 4 x 2 buffers of 64 MiB = 131,072 pages of 4 KiB each, faulted in afresh every round without it
    assert plain["faults"] > 50_000
    assert kept["applied"] is True and kept["faults"] < 1_000
    opted_out = _probe(python, {**env, "FMA_GENRE_MALLOC": "default"}, "keep")
    assert opted_out["applied"] is False and opted_out["faults"] > 50_000
