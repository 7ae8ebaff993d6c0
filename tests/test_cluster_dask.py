"""The features stage on a real dask scheduler and two real workers.

The shards must equal a local run's, and they must have been computed under the worker processes
(their pids, as the workers report them), not in the client: each dask task decodes its shard in a
process of its own, so a crashing decoder never kills a dask worker. A dask worker that is killed
anyway (``KilledWorker`` once the scheduler's retries are spent) costs only its shard's attempt.
"""

from __future__ import annotations

import os

import pytest

from preprocess import driver
from preprocess.options import FeatureOptions
from preprocess.recipe import RECIPES
from preprocess.supervise import FAULTS_ENV
from preprocess.synth.zipped import zip_audio_tree
from tests._cluster_common import (
    SHARD_SIZE,
    assert_same_shard_set,
    assert_same_shards_from_zip,
    features_run,
    run_local,
    shard_names,
)
from tests._dask_cluster import DaskCluster
from tests._faults import assert_same_but_culprits, children, cmdline, faults_value, pick_culprits

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
    done = features_run(
        python, mini_fma[0], out, subprocess_env, "--backend", "dask", "--scheduler", dask_cluster.address
    )
    assert done.returncode == 0, done.stdout + done.stderr + dask_cluster.log_tail()
    assert "with dask backend" in done.stderr
    assert_same_shard_set(local_shards, out)
    # The decoding processes the dask workers started are stopped at the end of the run.
    left = [p for w in dask_cluster.worker_pids for p in children(w) if "preprocess.supervise" in cmdline(p)]
    assert left == [], left


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
    ran = {r["name"]: r["supervisor_pid"] for r in summary["computed"]}
    decoded = {r["pid"] for r in summary["computed"]}
    assert sorted(ran) == shard_names(local_shards), "every shard is computed once"
    assert os.getpid() not in ran.values(), "a shard was computed in the client process"
    assert set(ran.values()) <= dask_cluster.worker_pids, (ran, dask_cluster.worker_pids)
    assert set(ran.values()) == dask_cluster.worker_pids, f"both workers should get shards: {ran}"
    # Decoded in processes the dask workers started, neither in them nor in the client.
    assert not decoded & (dask_cluster.worker_pids | {os.getpid()}), decoded
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
    assert set(r["supervisor_pid"] for r in summary["computed"]) <= dask_cluster.worker_pids
    assert summary["failed"]["missing file"] >= 1
    assert_same_shards_from_zip(local_shards, out)


def test_bad_scheduler_is_a_clear_error(mini_fma, tmp_path, python, subprocess_env):
    out = tmp_path / "shards"
    scheduler = str(tmp_path / "no-such-scheduler.json")
    done = features_run(
        python, mini_fma[0], out, subprocess_env, "--backend", "dask", "--scheduler", scheduler, timeout=120
    )
    assert done.returncode != 0
    assert "scheduler" in done.stderr and "no-such-scheduler.json" in done.stderr, done.stderr
    assert not list(out.glob("*.h5"))


def test_dying_killing_and_hanging_tracks_on_dask(local_shards, mini_fma, tmp_path, repo_root, python):
    """Real signals on a real cluster: a track that segfaults its decoder, one that hangs in "C" (SIGALRM
    blocked), and one whose decoder SIGKILLs the dask worker itself (an OOM kill of the worker: its
    task dies, the scheduler retries it once, then the client gets KilledWorker and submits it again,
    and that attempt isolates the culprit). The run completes; only the culprits differ."""
    culprits = pick_culprits(local_shards, ["segv", "hang", "killparent"])
    env = {FAULTS_ENV: faults_value(culprits), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    with DaskCluster(tmp_path / "dask", repo_root, n_workers=2, env=env) as cluster:
        before = set(cluster.worker_pids_by_address().values())
        out = tmp_path / "shards"
        done = features_run(
            python,
            mini_fma[0],
            out,
            cluster.env,
            "--backend",
            "dask",
            "--scheduler",
            cluster.address,
            "--track-timeout",
            "5",
        )
        after = set(cluster.worker_pids_by_address().values())
        assert done.returncode == 0, done.stdout + done.stderr + cluster.log_tail()
    reasons = {
        tid: {
            "segv": "worker died: SIGSEGV while decoding",
            "hang": "timed out after 5 s",
            "killparent": "worker died: SIGKILL while decoding",
        }[mode]
        for tid, (mode, _) in culprits.items()
    }
    assert_same_but_culprits(local_shards, out, reasons)
    assert "KilledWorker" in done.stderr, done.stderr  # the client saw it and went on
    assert before - after, "a dask worker process should have been killed (and restarted by its nanny)"
    assert not (out / "attempts").exists()
