"""Shared fixtures. Every test is seeded; generated data is built once per session."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    """A test that needs the generated mini-FMA is slow: building it takes minutes on 2 cores.

    ``make test-fast`` (``pytest -m "not slow and not cluster"``) leaves such tests out;
    ``make check`` runs everything.
    """
    for item in items:
        if "mini_fma" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def subprocess_env() -> dict:
    """Environment for child processes: the repo importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def mini_fma(tmp_path_factory):
    """A generated mini-FMA (120 tracks, seed 0), built once per test session.

    Returns ``(fma_dir, truth)`` where ``truth`` is the dict
    ``preprocess.synth.generate`` returns (also saved as ``synth_truth.json``).
    Tests must not modify it: copy it first.
    """
    from preprocess.synth.generator import generate

    out = tmp_path_factory.mktemp("mini-fma")
    truth = generate(out, n_tracks=120, seed=0)
    assert json.loads((out / "synth_truth.json").read_text()) is not None
    return out, truth


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A private single-node SLURM cluster (2 CPUs; tests/_slurm_cluster.py), stopped by pid at the
    end of the module. Skips where SLURM is missing and cannot be installed (not root, no apt)."""
    from tests._slurm_cluster import SlurmCluster, ensure_installed

    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=2) as cluster:
        yield cluster
