"""The features stage as a SLURM array job, on a real private SLURM cluster (munged, slurmctld, slurmd).

`python -m preprocess slurm` submits the project's own cluster/features-array.sbatch and
cluster/finalize.sbatch. A cancelled array task (as a preempted one) is repaired by rerunning the
command; the outputs must equal a local run's, shard by shard; and a rerun after losing one shard
must submit exactly one array task that recomputes exactly that shard and touches no other.
The cluster's slurm.conf and daemons: tests/_slurm_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from preprocess.slurm import format_indices
from preprocess.supervise import FAULTS_ENV
from preprocess.synth.zipped import zip_only_copy
from tests._cluster_common import (
    RECIPE_ARGS,
    SHARD_SIZE,
    assert_same_shard_set,
    assert_same_shards_from_zip,
    run_local,
    shard_names,
)
from tests._faults import assert_same_but_culprits, faults_value, pick_culprits
from tests._slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(600)]

SHARDS_PER_TASK = 2
QUEUE_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def local_shards(mini_fma, tmp_path_factory, python, subprocess_env):
    return run_local(python, mini_fma[0], tmp_path_factory.mktemp("local") / "shards", subprocess_env)


def submit(slurm: SlurmCluster, python: str, env: dict, fma_dir: Path, out: Path, *more: str):
    cmd = [
        python,
        "-m",
        "preprocess",
        "slurm",
        "--fma-dir",
        str(fma_dir),
        "--subset",
        "large",
        "--out",
        str(out),
        "--shard-size",
        str(SHARD_SIZE),
        *RECIPE_ARGS,
        "--shards-per-task",
        str(SHARDS_PER_TASK),
        "--cpus-per-task",
        "1",
        *more,
    ]
    return subprocess.run(
        cmd,
        env={**env, **slurm.env, "PYTHONPATH": env["PYTHONPATH"]},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def submissions(out: Path) -> list[dict]:
    path = out / "slurm" / "submissions.json"
    return json.loads(path.read_text()) if path.exists() else []


def job_records(slurm: SlurmCluster, job_id: str) -> list[dict]:
    """`scontrol show job -o JOB`: one dict per job (each array task is its own record)."""
    done = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        env=slurm.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in done.stdout.splitlines() if line.strip()]


def wait_and_check_jobs(slurm: SlurmCluster, record: dict) -> tuple[list[dict], dict]:
    """Wait for the queue to drain; every array task and the finalize job must have exited 0."""
    try:
        slurm.wait_queue_empty(QUEUE_TIMEOUT_S)
    except TimeoutError as exc:
        pytest.fail(f"SLURM jobs did not finish: {exc}")
    tasks = job_records(slurm, record["array_job_id"])
    (final,) = job_records(slurm, record["finalize_job_id"])
    for job in [*tasks, final]:
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), (job, slurm.log_tail())
    return tasks, final


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def test_slurm_array_equals_local_run_and_reruns_repair_only_what_is_missing(
    slurm, local_shards, mini_fma, tmp_path, python, subprocess_env
):
    fma_dir = mini_fma[0]
    out = tmp_path / "shards"
    names = shard_names(local_shards)
    num_tasks = -(-len(names) // SHARDS_PER_TASK)
    assert num_tasks >= 3, f"the mini-FMA should give several array tasks, got {len(names)} shards"

    # --dry-run: shows the sbatch commands, submits and writes nothing.
    dry = submit(slurm, python, subprocess_env, fma_dir, out, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"--array=0-{num_tasks - 1}" in dry.stdout and "features-array.sbatch" in dry.stdout, dry.stdout
    assert not out.exists() and slurm.job_ids() == []

    # Submit held, so that a second submit is sure to find the first one's jobs queued: it must refuse.
    first = submit(slurm, python, subprocess_env, fma_dir, out, "--sbatch-arg=--hold")
    assert first.returncode == 0, first.stdout + first.stderr
    (record,) = submissions(out)
    array_id, finalize_id = record["array_job_id"], record["finalize_job_id"]
    assert sorted(int(k) for k in record["tasks"]) == list(range(num_tasks))
    assert sorted(n for group in record["tasks"].values() for n in group) == names
    assert len(slurm.job_ids()) == num_tasks + 1
    busy = submit(slurm, python, subprocess_env, fma_dir, out)
    assert busy.returncode == 2 and "still queued" in busy.stderr, busy.stdout + busy.stderr
    assert len(submissions(out)) == 1 and len(slurm.job_ids()) == num_tasks + 1

    # Task 0 is cancelled (as a preempted or failed task would be); the others run. The finalize
    # job's afterok dependency can then never be satisfied: no manifest, task 0's shards missing.
    control = {"env": slurm.env, "check": True, "capture_output": True, "timeout": 30}
    subprocess.run(["scancel", f"{array_id}_0"], **control)
    subprocess.run(["scontrol", "release", array_id, finalize_id], **control)
    slurm.wait_until(
        lambda: slurm.queue() == [(finalize_id, "PENDING", "DependencyNeverSatisfied")],
        QUEUE_TIMEOUT_S,
        "only the finalize job to be left, with a never-satisfied dependency",
    )
    states = {t["ArrayTaskId"]: t["JobState"] for t in job_records(slurm, array_id)}
    assert states.pop("0", "CANCELLED") == "CANCELLED"  # a task cancelled while pending may not be listed
    assert states == {str(t): "COMPLETED" for t in range(1, num_tasks)}
    assert not (out / "manifest.json").exists()
    assert sorted(set(names) - set(shard_names(out))) == sorted(record["tasks"]["0"])

    # The rerun cancels the orphaned finalize job and submits task 0 alone.
    repair = submit(slurm, python, subprocess_env, fma_dir, out)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert f"cancelled finalize job(s) {finalize_id}" in repair.stdout, repair.stdout
    record = submissions(out)[-1]
    assert record["tasks"] == {"0": sorted(record["tasks"]["0"])} and record["num_tasks"] == num_tasks
    tasks, final = wait_and_check_jobs(slurm, record)
    assert [int(t["ArrayTaskId"]) for t in tasks] == [0]
    # afterok: finalize started only once the array task had ended.
    assert _time(final["StartTime"]) >= max(_time(t["EndTime"]) for t in tasks)
    logs = out / "slurm" / "logs"
    assert len(list(logs.glob(f"features-{array_id}_*.out"))) == num_tasks - 1
    finalize_log = (logs / f"finalize-{record['finalize_job_id']}.out").read_text()
    assert "wrote" in finalize_log and "manifest.json" in finalize_log and "OK" in finalize_log, finalize_log
    # The outputs themselves, not only the job states (docs/cluster.md: a drained node reports COMPLETED).
    assert_same_shard_set(local_shards, out)

    # Lose one shard of a two-shard task; the rerun submits that task alone, which recomputes it
    # and leaves its partner (and every other shard) untouched.
    task, (lost, partner) = next((int(k), v) for k, v in submissions(out)[0]["tasks"].items() if len(v) == 2)
    (out / lost).unlink()
    before = {n: stamp(out / n) for n in names if n != lost}
    second = submit(slurm, python, subprocess_env, fma_dir, out)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 missing or incomplete" in second.stdout, second.stdout
    record = submissions(out)[-1]
    assert record["tasks"] == {str(task): [lost]} and record["num_tasks"] == num_tasks
    tasks, _ = wait_and_check_jobs(slurm, record)
    assert [int(t["ArrayTaskId"]) for t in tasks] == [task], "exactly one array task must be submitted"
    (log,) = (out / "slurm" / "logs").glob(f"features-{record['array_job_id']}_*.out")
    assert "1 of this task's 2 already complete; computing 1" in log.read_text(), log.read_text()
    assert {n: stamp(out / n) for n in names if n != lost} == before, "a complete shard was rewritten"
    assert partner in before
    assert_same_shard_set(local_shards, out)

    # Everything complete and finalized: a further run submits nothing.
    third = submit(slurm, python, subprocess_env, fma_dir, out)
    assert third.returncode == 0 and "nothing to do" in third.stdout, third.stdout + third.stderr
    assert len(submissions(out)) == 3 and slurm.job_ids() == []


def test_slurm_array_reads_the_zip_and_equals_the_local_run(
    slurm, local_shards, mini_fma, tmp_path, python, subprocess_env
):
    """FMA_DIR holds fma_large.zip and no tree (make download UNPACK=0): the array tasks find the zip
    and read their tracks from it; the shards are the local tree run's."""
    fma_dir = zip_only_copy(mini_fma[0], tmp_path / "fma")
    out = tmp_path / "shards"
    done = submit(slurm, python, subprocess_env, fma_dir, out)
    assert done.returncode == 0, done.stdout + done.stderr
    wait_and_check_jobs(slurm, submissions(out)[-1])
    logs = "".join(p.read_text() for p in (out / "slurm" / "logs").glob("features-*.out"))
    assert f"from the zip {fma_dir / 'fma_large.zip'}" in logs, logs
    assert_same_shards_from_zip(local_shards, out)


def test_an_array_task_killed_by_a_signal_is_named_and_reruns_isolate_the_culprit(
    slurm, local_shards, mini_fma, tmp_path, python, subprocess_env
):
    """A track whose decoder takes its whole array task down (SIGKILL of the task's features process,
    as a cgroup OOM kill would): the task fails, `finalize` names it (task id, signal), the first rerun
    retries the shard and is killed again, the second isolates the culprit and the shard set completes,
    equal to the local run's but for the culprit."""
    fma_dir = mini_fma[0]
    culprits = pick_culprits(local_shards, ["killparent"])
    ((tid, (_, victim)),) = culprits.items()
    env = {**subprocess_env, FAULTS_ENV: faults_value(culprits)}
    out = tmp_path / "shards"
    for run in (1, 2):
        done = submit(slurm, python, env, fma_dir, out)
        assert done.returncode == 0, done.stdout + done.stderr
        record = submissions(out)[-1]
        waiting = [(record["finalize_job_id"], "PENDING", "DependencyNeverSatisfied")]
        slurm.wait_until(
            lambda waiting=waiting: slurm.queue() == waiting,
            QUEUE_TIMEOUT_S,
            "the array tasks to end, the finalize job left waiting for a dependency never satisfied",
        )
        (task,) = [int(k) for k, names in record["tasks"].items() if victim in names]
        job = f"{record['array_job_id']}_{task}"
        (state,) = [t for t in job_records(slurm, record["array_job_id"]) if t["ArrayTaskId"] == str(task)]
        assert (state["JobState"], state["ExitCode"]) == ("FAILED", "0:9"), (run, state, slurm.log_tail())
        assert not (out / victim).exists()
        named = subprocess.run(
            [python, "-m", "preprocess", "finalize", str(out)],
            env={**subprocess_env, **slurm.env, "PYTHONPATH": subprocess_env["PYTHONPATH"]},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert named.returncode == 1
        assert f"{victim}: missing" in named.stderr and f"SLURM task {job}" in named.stderr, named.stderr
        assert "FAILED, signal 9 = SIGKILL" in named.stderr, named.stderr
    repair = submit(slurm, python, env, fma_dir, out)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    record = submissions(out)[-1]
    wait_and_check_jobs(slurm, record)
    logs = "".join(
        p.read_text() for p in (out / "slurm" / "logs").glob(f"features-{record['array_job_id']}_*.out")
    )
    assert "isolated processes" in logs, logs
    assert_same_but_culprits(local_shards, out, {tid: "worker died: SIGKILL while decoding"})
    assert (out / "manifest.json").exists() and not (out / "attempts").exists()


def _time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S")


def test_batch_script_refuses_to_run_outside_an_array(tmp_path, python, repo_root):
    """Run by hand without --array, the script says how to submit it instead of computing shard 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    script = repo_root / "cluster" / "features-array.sbatch"
    done = subprocess.run(
        ["bash", str(script), python, str(repo_root), str(tmp_path), "large", str(tmp_path / "out"), "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "sbatch --array" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("indices", "spec"),
    [([0], "0"), ([0, 1, 2, 3], "0-3"), ([3], "3"), ([0, 1, 2, 5, 7, 8], "0-2,5,7-8"), ([1, 3, 5], "1,3,5")],
)
def test_array_spec_lists_exactly_the_given_tasks(indices, spec):
    assert format_indices(indices) == spec
