"""Submit the features stage to SLURM: an array job over the missing shards, then a finalize job.

Reads the metadata and computes the shard plan exactly as `python -m preprocess features` does,
finds which shards in OUT are missing or incomplete, and submits

  1. cluster/features-array.sbatch as an array job: with G = ceil(shards / --shards-per-task)
     groups, array task g runs `preprocess features --task-index g --num-tasks G`, i.e. the
     shards at positions k with k % G == g, with --cpus-per-task joblib workers (one shard per
     worker at a time, so K >= C keeps every CPU busy); only the groups that contain a missing
     shard are submitted (complete shards inside them are skipped);
  2. cluster/finalize.sbatch with --dependency=afterok:<array job>: writes manifest.json and
     verifies the shard set.

Resume: run the same command again. Only shards that are still missing or incomplete are
submitted (a failed, cancelled or preempted task is repaired this way); if every shard is
complete but there is no manifest, only the finalize job is submitted; if jobs from an earlier
submission for OUT are still queued, nothing is submitted (wait, or scancel them).

Task logs go to OUT/slurm/logs/, each submission is recorded in OUT/slurm/submissions.json.
The job steps run the python given by --python (default: this interpreter, e.g. the venv's)
with the repository on PYTHONPATH, so OUT, FMA_DIR and the repository must be on a file
system that the compute nodes see.

Example (fma_large: ~190 shards of 256 tracks -> 12 tasks of 16 shards on 8 CPUs each):
  python -m preprocess slurm --fma-dir /data/fma --subset large --out /scratch/shards/fma_large \\
      --cpus-per-task 8 --shards-per-task 16 --partition cpu --time 01:00:00
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from preprocess.assign import select_for_task
from preprocess.options import FeatureOptions, add_plan_arguments
from preprocess.plan import build_plan, changed_plan_error, plan_changes, shard_status
from shards import MANIFEST_NAME, atomic_write_text
from shards.errors import FmaGenreError

REPO = Path(__file__).resolve().parents[1]
FEATURES_SCRIPT = REPO / "cluster" / "features-array.sbatch"
FINALIZE_SCRIPT = REPO / "cluster" / "finalize.sbatch"
SUBMISSIONS_NAME = "submissions.json"
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
}


log = logging.getLogger(__name__)


class SlurmError(FmaGenreError):
    """Bad submission options, sbatch/squeue failed, or the queue holds unfinished jobs for this shard set."""


@dataclass(frozen=True)
class SubmitPlan:
    """What one submission does.

    Attributes
    ----------
    num_tasks : int
        G, the number of groups the shard list is cut into (``--num-tasks`` of each task).
    tasks : dict
        array task index -> names of the missing shards it will compute.
    num_shards : int
        Shards in the plan.
    complete : int
        Shards already complete (not recomputed).
    needs_finalize : bool
        Whether a finalize job is submitted (shards missing, or no manifest yet).
    """

    num_tasks: int
    tasks: dict[int, list[str]]
    num_shards: int
    complete: int
    needs_finalize: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_plan_arguments(
        parser.add_argument_group("features options, passed on to every task (as in `preprocess features`)")
    )
    parser.add_argument(
        "--cpus-per-task",
        type=int,
        default=4,
        metavar="C",
        help="CPUs per array task = joblib workers inside the task (default 4)",
    )
    parser.add_argument(
        "--shards-per-task",
        type=int,
        default=None,
        metavar="K",
        help="shards per array task (default: C, one shard per worker; 1 with "
        "--cpus-per-task 1 gives one task per shard). A shard is one worker's "
        "unit of work, so K < C leaves CPUs idle",
    )
    parser.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    parser.add_argument("--time", help="time limit per array task, e.g. 01:00:00 (default: the partition's)")
    parser.add_argument(
        "--mem", help="memory per array task, e.g. 8G (default: the partition's; ~1 GB per CPU is plenty)"
    )
    parser.add_argument(
        "--max-running",
        type=int,
        metavar="M",
        help="run at most M array tasks at once (sbatch --array=...%%M)",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter the jobs run (default: this one, %(default)s)"
    )
    parser.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra sbatch option for both jobs, e.g. --sbatch-arg=--account=abc (repeatable)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and the sbatch commands, submit nothing, write nothing",
    )


def main(args: argparse.Namespace) -> int:
    """``python -m preprocess slurm``: 0 when submitted (or nothing to do); errors raise SlurmError."""
    options = FeatureOptions.from_args(args)
    _validate(args)
    return submit(args, options.replace(fma_dir=options.fma_dir.resolve(), out=options.out.resolve()))


def submit(args: argparse.Namespace, options: FeatureOptions) -> int:
    """Plan, check the queue, submit; print what was done. Returns the exit code."""
    plan = plan_submission(options, args.shards_per_task)
    print(
        f"slurm: {plan.num_shards} shards planned in {options.out}: {plan.complete} complete, "
        f"{sum(len(v) for v in plan.tasks.values())} missing or incomplete"
    )
    if not plan.tasks and not plan.needs_finalize:
        print("slurm: nothing to do: every shard is complete and manifest.json exists")
        return 0
    array_cmd, finalize_cmd = sbatch_commands(args, options, plan)
    if args.dry_run:
        for task, names in sorted(plan.tasks.items()):
            print(f"  task {task}: {', '.join(names)}")
        if array_cmd:
            print("would run:", shlex.join(array_cmd))
            finalize_cmd.insert(2, "--dependency=afterok:<array job id>")
        print("would run:", shlex.join(finalize_cmd))
        return 0
    missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
    if missing:
        raise SlurmError(
            f"{', '.join(missing)} not found: run this on a SLURM login node (or put SLURM's "
            "commands on PATH); --dry-run shows what would be submitted"
        )
    records = _read_submissions(options.out)
    cancelled = check_queue(records)
    if cancelled:
        print(
            f"slurm: cancelled finalize job(s) {', '.join(cancelled)} of an earlier submission "
            "whose array job failed (their dependency could never be satisfied)"
        )
    _submit_jobs(options.out, plan, records, array_cmd, finalize_cmd, args.cpus_per_task)
    return 0


def sbatch_commands(
    args: argparse.Namespace, options: FeatureOptions, plan: SubmitPlan
) -> tuple[list[str] | None, list[str]]:
    """The sbatch command lines of the array job (None if no shard is missing) and of the finalize job."""
    logs = options.out / "slurm" / "logs"
    common = [*_optional("--partition", args.partition), *args.sbatch_arg, f"--chdir={REPO}"]
    array_cmd = None
    if plan.tasks:
        array = format_indices(sorted(plan.tasks))
        if args.max_running:
            array += f"%{args.max_running}"
        array_cmd = [
            "sbatch",
            "--parsable",
            f"--array={array}",
            f"--cpus-per-task={args.cpus_per_task}",
            *_optional("--time", args.time),
            *_optional("--mem", args.mem),
            *common,
            f"--output={logs / 'features-%A_%a.out'}",
            str(FEATURES_SCRIPT),
            args.python,
            str(REPO),
            str(options.fma_dir),
            options.subset,
            str(options.out),
            str(plan.num_tasks),
            *options.plan_argv(),
            "--no-progress",
        ]
    finalize_cmd = [
        "sbatch",
        "--parsable",
        *_optional("--time", args.time),
        *common,
        f"--output={logs / 'finalize-%j.out'}",
        str(FINALIZE_SCRIPT),
        args.python,
        str(REPO),
        str(options.out),
    ]
    return array_cmd, finalize_cmd


def _submit_jobs(
    out: Path,
    plan: SubmitPlan,
    records: list[dict],
    array_cmd: list[str] | None,
    finalize_cmd: list[str],
    cpus_per_task: int,
) -> None:
    """Submit the array job (if any), then the finalize job depending on it; record both."""
    logs = out / "slurm" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Recorded as soon as each job is queued, so that a rerun knows about it even if the next
    # sbatch fails.
    record = {
        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "array_job_id": None,
        "finalize_job_id": None,
        "num_tasks": plan.num_tasks,
        "tasks": {str(k): v for k, v in sorted(plan.tasks.items())},
        "commands": [c for c in (array_cmd, finalize_cmd) if c],
    }
    records.append(record)
    array_id = None
    if array_cmd:
        array_id = record["array_job_id"] = _sbatch(array_cmd)
        _write_submissions(out, records)
        print(
            f"slurm: submitted array job {array_id}: {len(plan.tasks)} task(s) of {plan.num_tasks} "
            f"({cpus_per_task} CPUs each); logs in {logs}"
        )
        finalize_cmd.insert(2, f"--dependency=afterok:{array_id}")
    finalize_id = record["finalize_job_id"] = _sbatch(finalize_cmd)
    _write_submissions(out, records)
    print(
        f"slurm: submitted finalize job {finalize_id}"
        + (f" (runs after every task of {array_id} succeeds)" if array_id else "")
    )
    print(
        f"slurm: watch with `squeue -j {','.join(i for i in (array_id, finalize_id) if i)}`; "
        "when it is done, rerun this command to resubmit anything that failed"
    )


def plan_submission(options: FeatureOptions, shards_per_task: int) -> SubmitPlan:
    """Which array tasks to submit: the groups holding a shard that is missing or incomplete.

    Uses the features stage's own plan and completeness test, so a task never skips a shard
    this command counted as missing, nor recomputes one it counted as complete.
    """
    plan = build_plan(options)
    changes = plan_changes(options.out, plan) if options.out.is_dir() else []
    if changes:
        raise changed_plan_error(options.out, changes, "Use another --out, or the same settings as before.")
    num_tasks = max(1, math.ceil(len(plan.specs) / shards_per_task))
    tasks: dict[int, list[str]] = {}
    complete = 0
    for task in range(num_tasks):
        for spec in select_for_task(plan.specs, task, num_tasks):
            if shard_status(options.out / spec.name, spec, plan.data)[1] is None:
                complete += 1
            else:
                tasks.setdefault(task, []).append(spec.name)
    needs_finalize = bool(tasks) or not (options.out / MANIFEST_NAME).exists()
    return SubmitPlan(
        num_tasks=num_tasks,
        tasks=tasks,
        num_shards=len(plan.specs),
        complete=complete,
        needs_finalize=needs_finalize,
    )


def format_indices(indices: list[int]) -> str:
    """Sorted ints as a SLURM array spec with ranges: [0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts: list[str] = []
    start = prev = None
    for i in indices:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


def check_queue(records: list[dict]) -> list[str]:
    """Refuse while an earlier submission's array tasks are queued; cancel its orphaned finalize jobs.

    Returns
    -------
    list of str
        Finalize job ids that were cancelled because their dependency can never be satisfied.
    """
    ours = {str(r[k]) for r in records for k in ("array_job_id", "finalize_job_id") if r.get(k)}
    if not ours:
        return []
    done = subprocess.run(
        ["squeue", "--me", "--noheader", "--array", "--format=%F|%i|%T|%r"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SlurmError(f"`squeue` failed (exit {done.returncode}): {done.stderr.strip()}")
    finalize_ids = {str(r["finalize_job_id"]) for r in records if r.get("finalize_job_id")}
    busy: list[str] = []
    orphans: list[str] = []
    for line in done.stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4 or fields[0] not in ours or fields[2] not in ACTIVE_STATES:
            continue
        if fields[0] in finalize_ids and fields[2] == "PENDING" and "DependencyNeverSatisfied" in fields[3]:
            orphans.append(fields[0])
        else:
            busy.append(f"{fields[1]} ({fields[2]})")
    if busy:
        raise SlurmError(
            f"jobs of an earlier submission for this shard set are still queued: {', '.join(busy[:10])}"
            f"{f' and {len(busy) - 10} more' if len(busy) > 10 else ''}. "
            "Wait for them (squeue) or cancel them (scancel JOBID), then rerun this command."
        )
    for job in orphans:
        subprocess.run(["scancel", job], capture_output=True, check=False)
    return orphans


def _sbatch(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise SlurmError(
            "`sbatch` not found: run this on a SLURM login node (or put sbatch on PATH)"
        ) from exc
    if done.returncode != 0:
        hint = ""
        if "array" in done.stderr.lower():
            hint = (
                "\nhint: the cluster's MaxArraySize (`scontrol show config | grep MaxArraySize`) may be "
                "smaller than the number of tasks: raise --shards-per-task or --shard-size"
            )
        raise SlurmError(
            f"sbatch failed (exit {done.returncode}): {done.stderr.strip()}\ncommand: {shlex.join(cmd)}{hint}"
        )
    match = re.match(r"\s*(\d+)", done.stdout)
    if not match:
        raise SlurmError(f"could not read a job id from sbatch's output {done.stdout!r}")
    return match.group(1)


def _read_submissions(out: Path) -> list[dict]:
    path = out / "slurm" / SUBMISSIONS_NAME
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SlurmError(f"{path}: unreadable ({exc}); delete it if no job of it is still queued") from exc
    if not isinstance(records, list):
        raise SlurmError(f"{path}: expected a JSON list of submissions; delete it if no job is queued")
    return records


def _write_submissions(out: Path, records: list[dict]) -> None:
    atomic_write_text(out / "slurm" / SUBMISSIONS_NAME, json.dumps(records, indent=1) + "\n")


def _optional(flag: str, value) -> list[str]:
    return [f"{flag}={value}"] if value not in (None, "") else []


def _validate(args: argparse.Namespace) -> None:
    if args.shards_per_task is None:
        args.shards_per_task = args.cpus_per_task
    if args.cpus_per_task < 1:
        raise SlurmError(f"--cpus-per-task must be >= 1, got {args.cpus_per_task}")
    if args.shards_per_task < 1:
        raise SlurmError(f"--shards-per-task must be >= 1, got {args.shards_per_task}")
    if args.shards_per_task < args.cpus_per_task:
        log.warning(
            "slurm: --shards-per-task %d < --cpus-per-task %d: each task can keep only %d CPU(s) "
            "busy (one shard per worker)",
            args.shards_per_task,
            args.cpus_per_task,
            args.shards_per_task,
        )
    if args.max_running is not None and args.max_running < 1:
        raise SlurmError(f"--max-running must be >= 1, got {args.max_running}")
    if not Path(args.python).exists():
        raise SlurmError(f"--python {args.python}: no such interpreter")
    if not os.access(args.python, os.X_OK):
        raise SlurmError(f"--python {args.python}: not executable")
    for script in (FEATURES_SCRIPT, FINALIZE_SCRIPT):
        if not script.exists():
            raise SlurmError(f"{script}: batch script missing from the repository")
