"""preprocess.supervise: real worker processes, real signals, real hangs (each test a few seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import h5py
import pytest

from preprocess.errors import FeaturesError
from preprocess.supervise import (
    FAULTS_ENV,
    Died,
    Done,
    Failed,
    Job,
    Pool,
    inject_fault,
    ordered_map,
    parse_faults,
)
from tests._faults import kill_group, start


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_jobs_run_in_worker_processes_and_workers_are_reused():
    with Pool(2) as pool:
        for x in range(4):
            pool.submit(Job(x, "tests._faults:job_value", (x,)))
        events = [pool.next_event() for _ in range(4)]
        pids = pool.pids
    assert all(isinstance(e, Done) for e in events)
    assert sorted(e.value["square"] for e in events) == [0, 1, 4, 9]
    assert {e.value["pid"] for e in events} == {e.pid for e in events} <= set(pids)
    assert len(pids) == 2 and os.getpid() not in pids
    assert {e.value["ppid"] for e in events} == {os.getpid()}
    assert not any(_alive(pid) for pid in pids), "close() leaves no worker"


@pytest.mark.parametrize(("how", "name"), [("segv", "SIGSEGV"), ("kill", "SIGKILL"), ("abort", "SIGABRT")])
def test_a_worker_killed_by_a_signal_is_reported_with_the_item_in_flight(how, name):
    with Pool(2) as pool:
        pool.submit(Job("dies", "tests._faults:job_items", ([10, 11, 12], 11, how), beats=True))
        pool.submit(Job("lives", "tests._faults:job_items", ([20, 21],), beats=True))
        events = {e.job.key: e for e in (pool.next_event(), pool.next_event())}
        # The pool goes on: a new worker takes the next job.
        pool.submit(Job("after", "tests._faults:job_value", (3,)))
        after = pool.next_event()
    died = events["dies"]
    assert isinstance(died, Died) and (died.signal, died.item, died.timed_out) == (name, 11, None)
    assert died.how() == name
    assert isinstance(events["lives"], Done) and events["lives"].value == [20, 21]
    assert isinstance(after, Done) and after.value["square"] == 9 and after.pid != died.pid


def test_an_item_stuck_with_sigalrm_blocked_is_killed_from_outside_after_the_limit():
    with Pool(1, timeout_s=1.0) as pool:
        began = time.monotonic()
        pool.submit(Job("hangs", "tests._faults:job_items", ([1, 2, 3], 2, "hang"), beats=True))
        died = pool.next_event()
        took = time.monotonic() - began
        pids = [died.pid]
    assert isinstance(died, Died) and died.timed_out == 1.0 and died.item == 2
    assert died.how() == "timed out after 1 s" and died.signal == "SIGKILL"
    assert 1.0 <= took < 10, took
    assert not _alive(pids[0])


def test_time_between_items_and_one_time_setup_are_not_limited():
    """Work outside an item (a shard's write, after ``beat(None)``) is not timed, nor a worker's
    one-time set-up before its first item (imports, warming caches); the item itself is."""
    with Pool(1, timeout_s=0.5) as pool:
        pool.submit(Job("slow", "time:sleep", (1.5,)))
        assert isinstance(pool.next_event(), Done)
        pool.submit(Job("set up", "tests._faults:job_value", (2,), item="x", setup=("time:sleep", (1.5,))))
        assert isinstance(pool.next_event(), Done)
        pool.submit(Job("item", "time:sleep", (1.5,), item="y"))
        assert pool.next_event().timed_out == 0.5


def test_a_job_error_is_raised_with_its_type_and_the_pool_goes_on():
    with Pool(1) as pool:
        pool.submit(Job("bad", "tests._faults:job_raise", ("no space left on device",)))
        with pytest.raises(FeaturesError, match="no space left on device"):
            pool.next_event()
        pool.submit(Job("good", "tests._faults:job_value", (2,)))
        assert pool.next_event().value["square"] == 4


def test_a_fresh_job_gets_a_new_process():
    with Pool(1) as pool:
        pool.submit(Job(1, "tests._faults:job_value", (1,)))
        first = pool.next_event()
        pool.submit(Job(2, "tests._faults:job_value", (2,), fresh=True))
        second = pool.next_event()
    assert first.pid != second.pid


_PARENT = """
import sys, time
from preprocess.supervise import Job, Pool
pool = Pool(2)
pool.submit(Job("hang", "tests._faults:job_items", ([1, 2], 1, "hang"), beats=True))
pool.submit(Job("sleep", "time:sleep", (600,)))
pool._dispatch()
print(" ".join(map(str, pool.pids)), flush=True)
time.sleep(600)
"""


def test_workers_die_with_a_killed_parent(subprocess_env, python):
    """kill -9 of the process that started the pool (not of its group): the kernel kills its workers."""
    proc = start([python, "-c", _PARENT], subprocess_env, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in pids), "a worker outlived its parent"
    finally:
        kill_group(proc)


@pytest.mark.parametrize(("how", "want"), [("none", "ok"), ("segv", "SIGSEGV"), ("kill", "SIGKILL")])
def test_run_isolated_reports_the_death_of_its_child_and_its_caller_survives(how, want):
    with Pool(1) as pool:
        pool.submit(Job(how, "tests._faults:isolated_fault", (how,)))
        event = pool.next_event()
    assert isinstance(event, Done), "the worker that forked the child must survive"
    status, value = event.value
    if want == "ok":
        assert status == "ok" and value != event.pid  # it ran in another process
    else:
        assert (status, value) == ("died", want)


def test_ordered_map_keeps_order_retries_a_crash_once_and_times_out_a_hang(tmp_path):
    files = [str(tmp_path / f"{i:06d}.mp3") for i in range(6)]
    faults = "000001:segv,2:hang,4:kill"
    began = time.monotonic()
    out = list(ordered_map("tests._faults:job_file", files, (faults,), processes=2, timeout_s=1.0))
    assert out[0] == "000000" and out[3] == "000003" and out[5] == "000005"
    assert out[1] == Failed("decoder crashed: SIGSEGV") and out[4] == Failed("decoder crashed: SIGKILL")
    assert out[2] == Failed("timed out after 1 s")
    assert time.monotonic() - began < 60


def test_fault_hook_is_inert_unless_set_and_rejects_bad_entries(monkeypatch):
    monkeypatch.delenv(FAULTS_ENV, raising=False)
    inject_fault(123)  # nothing happens
    monkeypatch.setenv(FAULTS_ENV, "5:segv")
    inject_fault(123)  # another key: nothing happens
    assert parse_faults("123:segv, 000456:hang") == {"123": "segv", "000456": "hang"}
    for bad in ("123", "123:explode", ":segv"):
        with pytest.raises(ValueError, match=FAULTS_ENV):
            parse_faults(bad)


def test_pool_arguments_are_checked():
    with pytest.raises(ValueError, match="processes"):
        Pool(0)
    with pytest.raises(ValueError, match="timeout_s"):
        Pool(1, timeout_s=0)


def test_a_module_in_the_current_folder_does_not_shadow_the_workers_imports(tmp_path, python, subprocess_env):
    """Workers start with ``python -P``: a stray ``grp.py`` in the folder the command runs from (as in
    /tmp) is not imported in place of the standard library's."""
    marker = tmp_path / "shadowed"
    (tmp_path / "grp.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom _grp_missing import x\n")
    code = (
        "from preprocess.supervise import Job, Pool\n"
        "with Pool(1) as pool:\n"
        "    pool.submit(Job(1, 'preprocess.driver:software_versions'))\n"  # imports what features import
        "    print(pool.next_event().value['h5py'])\n"
    )
    done = subprocess.run(
        [python, "-P", "-c", code],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == h5py.__version__, done.stderr[-2000:]
    assert not marker.exists()
