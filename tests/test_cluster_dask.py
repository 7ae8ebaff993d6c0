"""The features stage through joblib's dask backend, on a real dask scheduler and two real workers.

The shards must equal a local run's, and they must have been computed in the worker processes
(their pids, as the workers report them), not in the client.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from preprocess import driver
from preprocess.options import FeatureOptions
from preprocess.recipe import RECIPES
from preprocess.synth.zipped import zip_audio_tree
from tests._cluster_common import (
    SHARD_SIZE,
    assert_same_shard_set,
    assert_same_shards_from_zip,
    features_argv,
    run_local,
    shard_names,
)
from tests._dask_cluster import DaskCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory, repo_root):
    """`dask scheduler` + 2 `dask worker` processes (1 thread each), stopped by pid at the end."""
    with DaskCluster(tmp_path_factory.mktemp("dask"), repo_root, n_workers=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local_shards(mini_fma, tmp_path_factory, python, subprocess_env):
    return run_local(python, mini_fma[0], tmp_path_factory.mktemp("local") / "shards", subprocess_env)


def test_cli_with_dask_backend_equals_local_run(
    dask_cluster, local_shards, mini_fma, tmp_path, python, subprocess_env
):
    """What `make features BACKEND=dask SCHEDULER=tcp://host:port` runs."""
    out = tmp_path / "shards"
    done = subprocess.run(
        features_argv(python, mini_fma[0], out, "--backend", "dask", "--scheduler", dask_cluster.address),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr + dask_cluster.log_tail()
    assert "with dask backend" in done.stderr
    assert_same_shard_set(local_shards, out)


def test_shards_are_computed_in_the_worker_processes(dask_cluster, local_shards, mini_fma, tmp_path):
    """The driver reports where each shard task ran; through a scheduler file this time."""
    out = tmp_path / "shards"
    summary = driver.run_features(
        FeatureOptions(
            mini_fma[0],
            out,
            subset="large",
            shard_size=SHARD_SIZE,
            fine=RECIPES["fine"],
            backend="dask",
            scheduler=str(dask_cluster.scheduler_file),
            progress=False,
        )
    )
    ran = {r["name"]: r["pid"] for r in summary["computed"]}
    assert sorted(ran) == shard_names(local_shards), "every shard is computed once"
    assert os.getpid() not in ran.values(), "a shard was computed in the client process"
    assert set(ran.values()) <= dask_cluster.worker_pids, (ran, dask_cluster.worker_pids)
    assert set(ran.values()) == dask_cluster.worker_pids, f"both workers should get shards: {ran}"
    assert_same_shard_set(local_shards, out)


def test_dask_workers_read_the_zip(dask_cluster, local_shards, mini_fma, tmp_path):
    """--audio-zip: the workers open the zip themselves and read their shards' members from it."""
    zip_path = zip_audio_tree(mini_fma[0], "fma_large", zip_path=tmp_path / "fma_large.zip")
    out = tmp_path / "shards"
    summary = driver.run_features(
        FeatureOptions(
            mini_fma[0],
            out,
            subset="large",
            shard_size=SHARD_SIZE,
            fine=RECIPES["fine"],
            backend="dask",
            audio_zip=zip_path,
            scheduler=dask_cluster.address,
            progress=False,
        )
    )
    assert set(r["pid"] for r in summary["computed"]) <= dask_cluster.worker_pids
    assert summary["failed"]["missing file"] >= 1
    assert_same_shards_from_zip(local_shards, out)


def test_bad_scheduler_is_a_clear_error(mini_fma, tmp_path, python, subprocess_env):
    out = tmp_path / "shards"
    done = subprocess.run(
        features_argv(
            python,
            mini_fma[0],
            out,
            "--backend",
            "dask",
            "--scheduler",
            str(tmp_path / "no-such-scheduler.json"),
        ),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "scheduler" in done.stderr and "no-such-scheduler.json" in done.stderr, done.stderr
    assert not list(out.glob("*.h5"))
