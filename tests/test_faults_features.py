"""Faults during the features stage: kill -9 at random moments, a full disk while a shard is written.

The promises (issue 3 and 6): a run killed at any moment and rerun ends with shard files
identical to an uninterrupted run's; no reader ever sees a partial shard under its final
name; a full disk gives a clear error, leaves no partial shard and keeps the shards
already written.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import signal
import subprocess
import time

import pytest

from shards import read_manifest, read_shard
from tests._faults import SHARD_GLOB, ShardWatcher, assert_same_shard, file_digests, kill_group, start

SHARD_SIZE = 8  # mini-FMA's ~100 selected tracks -> 15 shards: many moments to be killed between
TRIALS = 5


def features_cmd(python, fma_dir, out, jobs=2) -> list[str]:
    return [
        python,
        "-m",
        "preprocess",
        "features",
        "--fma-dir",
        str(fma_dir),
        "--subset",
        "large",
        "--out",
        str(out),
        "--jobs",
        str(jobs),
        "--shard-size",
        str(SHARD_SIZE),
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def reference(mini_fma, tmp_path_factory, python, subprocess_env):
    """An uninterrupted run: its folder, its timeline and every file's digest.

    ``timeline`` is (seconds after start at which each shard file appeared, sorted; total seconds).
    """
    out = tmp_path_factory.mktemp("reference") / "shards"
    log = out.with_name("features.log")
    began = time.monotonic()
    with open(log, "wb") as fh:
        proc = start(features_cmd(python, mini_fma[0], out), subprocess_env, stdout=fh, stderr=fh)
    appeared: dict[str, float] = {}
    while proc.poll() is None:
        for path in out.glob(SHARD_GLOB):
            appeared.setdefault(path.name, time.monotonic() - began)
        time.sleep(0.01)
    seconds = time.monotonic() - began
    assert proc.returncode == 0, log.read_text()
    digests = file_digests(out)
    assert len([n for n in digests if n.endswith(".h5")]) == len(read_manifest(out)["shards"]) >= 10
    return out, (sorted(appeared.values()), seconds), digests


def _assert_same_as_reference(out, reference) -> None:
    ref_dir, _, ref_digests = reference
    # Same files, byte for byte. (A kill inside the microseconds in which plan.json or
    # manifest.json is written could leave a small hidden temporary file: not compared.)
    assert {k: v for k, v in file_digests(out).items() if not k.startswith(".")} == ref_digests
    assert not list(out.glob(".*.h5.tmp-*"))  # no partial shard left behind under a temporary name
    for name in ref_digests:
        if name.endswith(".h5"):
            assert_same_shard(out / name, ref_dir / name)
    assert read_manifest(out) == read_manifest(ref_dir)
    assert json.loads((out / "plan.json").read_text()) == json.loads((ref_dir / "plan.json").read_text())


def test_kill_9_at_random_moments_then_rerun_gives_identical_shards(
    reference, mini_fma, tmp_path, python, subprocess_env
):
    _, (appear, seconds), ref_digests = reference
    total = len(ref_digests) - 2  # the shards, without plan.json and manifest.json
    rng = random.Random(6)
    # Seeded moments spread over the whole uninterrupted run (start-up included), one per fifth.
    # Each is replayed relative to the shards written by then, so machine load does not shift
    # every kill into the start-up: wait for as many shards as the reference had, then the rest.
    moments = [seconds * (0.02 + 0.93 * (i + rng.random()) / TRIALS) for i in range(TRIALS)]
    watcher = ShardWatcher(tmp_path)
    watcher.start()
    at_kill = []
    try:
        for trial, moment in enumerate(moments):
            out = tmp_path / f"trial{trial}"
            shards_before = sum(1 for t in appear if t <= moment)
            extra = moment - (appear[shards_before - 1] if shards_before else 0.0)
            proc = start(
                features_cmd(python, mini_fma[0], out),
                subprocess_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while len(list(out.glob(SHARD_GLOB))) < shards_before and proc.poll() is None:
                time.sleep(0.005)
            deadline = time.monotonic() + extra
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
            finished_before_kill = proc.poll() is not None
            kill_group(proc)
            at_kill.append((round(moment, 2), len(list(out.glob(SHARD_GLOB))), finished_before_kill))
            # Rerun to completion (watched too: a rerun must not expose a partial shard either).
            rerun = subprocess.run(
                features_cmd(python, mini_fma[0], out),
                env=subprocess_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert rerun.returncode == 0, (trial, rerun.stderr)
            _assert_same_as_reference(out, reference)
    finally:
        watcher.stop()
    print(
        f"reference run {seconds:.1f} s; (moment s, shards at kill, finished first): {at_kill}; "
        f"watcher: {watcher.polls} polls, {watcher.polls_with_shards} with shards, "
        f"{watcher.checks} full reads"
    )
    killed_mid_run = [k for _, k, finished in at_kill if not finished and 0 < k < total]
    assert len(killed_mid_run) >= 3, at_kill  # the kills really landed while shards were being written
    assert watcher.problems == []
    assert watcher.polls_with_shards >= 20 and watcher.checks >= TRIALS * total


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_while_a_shard_is_written(reference, mini_fma, tmp_path, python, subprocess_env):
    ref_dir, _, ref_digests = reference
    order = [s["name"] for s in json.loads((ref_dir / "plan.json").read_text())["shards"]]
    sizes = [(ref_dir / name).stat().st_size for name in order]
    # With one job the shards are written in plan order: let the first of the biggest shards
    # hit the file size limit, after the smaller ones before it were written.
    k = sizes.index(max(sizes))
    assert k >= 1 and max(sizes[:k]) < sizes[k]  # at least one shard written before the full disk
    limit = (max(sizes[:k]) + sizes[k]) // 2
    out = tmp_path / "shards"
    done = subprocess.run(
        features_cmd(python, mini_fma[0], out, jobs=1),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(limit),
    )
    print(done.stderr[-2000:])
    assert done.returncode > 0  # an error exit, not a crash by signal
    assert order[k] in done.stderr and "File too large" in done.stderr
    assert "Traceback" not in done.stderr  # a clear message, not a stack dump
    assert not (out / order[k]).exists()  # no partial shard under its final name
    assert not list(out.glob(".*"))  # and no temporary file left behind
    assert not (out / "manifest.json").exists()
    for name in order[:k]:  # the shards written before are intact
        read_shard(out / name, verify=True)
        assert file_digests(out)[name] == ref_digests[name]
    # Space again: the rerun keeps them as they are (not rewritten) and computes only the rest.
    kept = {name: (out / name).stat() for name in order[:k]}
    rerun = subprocess.run(
        features_cmd(python, mini_fma[0], out),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    for name, before in kept.items():
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name
    _assert_same_as_reference(out, reference)


def test_damaged_shards_and_plan_are_handled_by_a_rerun(
    reference, mini_fma, tmp_path, python, subprocess_env
):
    """A truncated shard and a zero-byte shard under final names (e.g. a copy cut short) are
    recomputed by a rerun; an unreadable plan.json is a clear error naming it."""
    ref_dir, _, ref_digests = reference
    out = tmp_path / "shards"
    shutil.copytree(ref_dir, out)
    names = sorted(n for n in ref_digests if n.endswith(".h5"))
    with open(out / names[1], "r+b") as fh:
        fh.truncate((out / names[1]).stat().st_size // 3)
    (out / names[-1]).write_bytes(b"")
    (out / "manifest.json").unlink()
    rerun = subprocess.run(
        features_cmd(python, mini_fma[0], out),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    _assert_same_as_reference(out, reference)

    (out / "plan.json").write_text('{"plan_version": 1, "subset": "lar')  # cut short by hand
    broken = subprocess.run(
        features_cmd(python, mini_fma[0], out),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert broken.returncode == 2
    assert broken.stderr.startswith("error: ") and str(out / "plan.json") in broken.stderr, broken.stderr
    assert "Traceback" not in broken.stderr
