"""Shards computed in supervised worker processes: a dead worker costs only its shard's attempt.

The rules (docs/reliability.md):

- a shard is computed in a worker process (:class:`preprocess.supervise.Pool`); the worker
  announces each track as it starts it;
- a track past ``--track-timeout`` gets its worker killed from outside; the track is failed as
  ``timed out after N s`` and the shard is computed again in a fresh worker, that track left out;
- a worker that dies (any signal) costs that attempt: the shard is retried once in a fresh
  process; if that dies too, its tracks are tried one by one in isolated processes
  (``preprocess.driver.compute_shard_isolated``): a track whose process dies is failed as
  ``worker died: SIGSEGV while decoding``, and the rest of the shard is written as usual;
- if even the isolating attempt dies twice between tracks (nothing to blame), the shard is
  given up for this run: it stays missing, the summary names it and a rerun tries again.

Each attempt is recorded before it starts in ``OUT/attempts/<shard>.json`` (deleted once the shard
is written). A record left behind by a process that was killed itself (a SLURM task, the features
command) counts as a death when the shard is tried again, so reruns follow the same rules across
processes, and ``finalize`` names the attempt that never finished (:func:`describe_attempts`).

The supervisor never looks inside a track's result: ``compute_shard`` and
``compute_shard_isolated`` (preprocess.driver) decode and write; this module only decides which
of them runs next and which tracks it must leave out with which reason.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from preprocess.supervise import Died, Done, Job, Pool
from shards import atomic_write_text

ATTEMPTS_DIR = "attempts"
COMPUTE = "preprocess.driver:compute_shard"
COMPUTE_ISOLATED = "preprocess.driver:compute_shard_isolated"
# Deaths of a shard's attempts (this run and earlier ones) before its tracks are isolated.
DEATHS_BEFORE_ISOLATING = 2
# Deaths of an isolating attempt with no track in flight (this run) before the shard is given up.
BLAMELESS_DEATHS_TO_GIVE_UP = 2

log = logging.getLogger(__name__)


def attempts_path(out: str | os.PathLike, shard_name: str) -> Path:
    return Path(out) / ATTEMPTS_DIR / f"{shard_name}.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _slurm_task() -> str | None:
    """``JOB_TASK`` of the SLURM array task this process runs in (or the job id), else None."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if job and task:
        return f"{job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class ShardRun:
    """One shard's attempts: what runs next, and its record on disk.

    Parameters
    ----------
    task : dict
        ``preprocess.driver.compute_shard``'s argument (its ``out`` holds the records).
    """

    def __init__(self, task: dict):
        self.task = task
        self.name = task["spec"]["name"]
        self.path = attempts_path(task["out"], self.name)
        self.record = self._load()
        self.earlier = len(self.record["attempts"])  # attempts of earlier runs
        self.in_flight = False

    def _load(self) -> dict:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            if record.get("shard") == self.name and isinstance(record.get("attempts"), list):
                return record
        except (OSError, ValueError):
            pass
        return {"shard": self.name, "attempts": [], "known_failures": {}}

    def _save(self) -> None:
        self.path.parent.mkdir(exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.record, indent=1, sort_keys=True) + "\n")

    @property
    def attempts(self) -> list[dict]:
        return self.record["attempts"]

    def deaths(self) -> int:
        """Attempts that died: by a signal (recorded) or with the process that ran them (no end)."""
        ended = self.attempts[:-1] if self.in_flight else self.attempts
        return sum(a.get("ended") is None or "died" in a["ended"] for a in ended)

    def blameless_isolated_deaths(self) -> int:
        """This run's isolating attempts that died with no track in flight."""
        ends = [a["ended"] for a in self.attempts[self.earlier :] if a["isolated"] and a.get("ended")]
        return sum("died" in end and end["track"] is None for end in ends)

    def next_job(self, fresh: bool) -> Job:
        """Record a new attempt and return its job."""
        isolated = self.deaths() >= DEATHS_BEFORE_ISOLATING
        self.attempts.append(
            {
                "started": _now(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "slurm_task": _slurm_task(),
                "isolated": isolated,
                "ended": None,
            }
        )
        self.in_flight = True
        if isolated and len(self.attempts) == self.earlier + 1:
            log.warning(
                "%s: %d earlier attempts died (recorded in %s): trying its tracks in isolated processes",
                self.name,
                self.deaths(),
                self.path,
            )
        self._save()
        task = {**self.task, "known_failures": dict(self.record["known_failures"])}
        return Job(self.name, COMPUTE_ISOLATED if isolated else COMPUTE, (task,), beats=True, fresh=fresh)

    def finished(self) -> None:
        """The shard is written: its record goes."""
        self.in_flight = False
        self.path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """This process stopped the attempt in flight itself (Ctrl-C, an error elsewhere): not a death."""
        if not self.in_flight:
            return
        self.in_flight = False
        self.attempts.pop()
        if self.attempts or self.record["known_failures"]:
            self._save()
        else:
            self.path.unlink(missing_ok=True)

    def died(self, event: Died) -> Job | dict:
        """Record how the attempt ended; the next attempt's job, or the give-up result."""
        self.in_flight = False
        track = None if event.item is None else int(event.item)
        attempt = self.attempts[-1]
        if event.timed_out is not None and track is not None:
            attempt["ended"] = {"timed_out": event.timed_out, "track": track}
            self.record["known_failures"][str(track)] = event.how()
        else:
            attempt["ended"] = {"died": event.how(), "track": track}
            if attempt["isolated"] and track is not None:
                self.record["known_failures"][str(track)] = f"worker died: {event.how()} while decoding"
        self._save()
        self._log(event, track, attempt["isolated"])
        if self.blameless_isolated_deaths() >= BLAMELESS_DEATHS_TO_GIVE_UP:
            return {
                "name": self.name,
                "gave_up": f"its worker died {self.deaths()} times ({event.how()}), twice while "
                f"isolating its tracks with none in flight; recorded in {self.path}",
            }
        return self.next_job(fresh=True)

    def _log(self, event: Died, track: int | None, isolated: bool) -> None:
        if event.timed_out is not None:
            log.warning(
                "%s: track %s %s: worker %s killed; the track is failed, the rest of the shard is "
                "computed in a fresh process",
                self.name,
                track,
                event.how(),
                event.pid,
            )
            return
        where = f"while decoding track {track}" if track is not None else "between tracks"
        if isolated and track is not None:
            then = "the track is failed, the other tracks are tried in isolated processes"
        elif self.deaths() >= DEATHS_BEFORE_ISOLATING:
            then = "trying the shard's tracks in isolated processes"
        else:
            then = "retrying the shard in a fresh process"
        log.warning("%s: worker %s died (%s) %s; %s", self.name, event.pid, event.how(), where, then)


def run_shards(pool: Pool, tasks: list[dict]) -> Iterator[dict]:
    """Compute every task's shard in ``pool`` under the rules of the module doc; yield as shards end.

    Yields
    ------
    dict
        ``compute_shard``'s result (plus ``supervisor_pid`` and ``attempts``, this run's attempts),
        or ``{"name", "gave_up": reason}`` for a shard given up.

    Errors a job raises (a full disk) propagate. Attempts still in flight when the generator
    stops (Ctrl-C, an error, the caller closing it) are removed from their records.
    """
    runs = {}
    waiting: collections.deque = collections.deque()
    for task in tasks:
        run = ShardRun(task)
        runs[run.name] = run
        waiting.append(run)
    try:
        while waiting or pool.pending:
            # An attempt is recorded when it starts, not while it waits: at most one per worker.
            while waiting and pool.pending < pool.processes:
                pool.submit(waiting.popleft().next_job(fresh=False))
            event = pool.next_event()
            run = runs[event.job.key]
            if isinstance(event, Done):
                attempts = len(run.attempts) - run.earlier
                run.finished()
                yield {**event.value, "supervisor_pid": os.getpid(), "attempts": attempts}
                continue
            outcome = run.died(event)
            if isinstance(outcome, Job):
                pool.submit(outcome)
            else:
                yield outcome
    finally:
        for run in runs.values():
            run.abandon()


def forget_attempts(out: str | os.PathLike, shard_names: list[str]) -> None:
    """Delete the records of shards that are complete (left by a process killed just after writing one)."""
    for name in shard_names:
        attempts_path(out, name).unlink(missing_ok=True)


def remove_attempts_dir(out: str | os.PathLike) -> None:
    """Remove ``OUT/attempts/`` if no record is left in it."""
    with contextlib.suppress(OSError):
        (Path(out) / ATTEMPTS_DIR).rmdir()


def clear_attempts(out: str | os.PathLike) -> None:
    """Forget every record (``--force`` starts over)."""
    shutil.rmtree(Path(out) / ATTEMPTS_DIR, ignore_errors=True)


# --------------------------------------------------------------------------- naming, for finalize


def describe_attempts(out: str | os.PathLike, shard_name: str) -> str | None:
    """What the records say about a shard that is not done, or None when there are none.

    E.g. ``an attempt by SLURM task 12_3 (pid 4567 on node5, started 2026-12-01T10:02:11) never
    finished: that process was killed (SLURM: FAILED, signal 9 = SIGKILL)``.
    """
    try:
        record = json.loads(attempts_path(out, shard_name).read_text(encoding="utf-8"))
        attempts = list(record["attempts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    said = []
    for attempt in attempts:
        who = f"pid {attempt.get('pid')} on {attempt.get('host')}, started {attempt.get('started')}"
        if attempt.get("slurm_task"):
            who = f"SLURM task {attempt['slurm_task']} ({who})"
        ended = attempt.get("ended")
        if ended is None:
            state = slurm_state(attempt.get("slurm_task"))
            cause = f"SLURM: {state}" if state else "a signal, the OOM killer, a time limit or a lost node"
            said.append(f"an attempt by {who} never finished: that process was killed ({cause})")
        elif "died" in ended:
            track = f" while decoding track {ended['track']}" if ended.get("track") is not None else ""
            said.append(f"the worker of an attempt by {who} died: {ended['died']}{track}")
    return "; ".join(said) or None


def slurm_state(job: str | None) -> str | None:
    """``FAILED, signal 9 = SIGKILL`` for a finished SLURM job that slurmctld still knows, else None."""
    if not job or shutil.which("scontrol") is None:
        return None
    try:
        done = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout)) if done.returncode == 0 else {}
    if "JobState" not in fields:
        return None
    status, _, sig = fields.get("ExitCode", "0:0").partition(":")
    if sig and sig != "0":
        from preprocess.supervise import signal_name

        return f"{fields['JobState']}, signal {sig} = {signal_name(int(sig))}"
    return f"{fields['JobState']}, exit status {status}"
