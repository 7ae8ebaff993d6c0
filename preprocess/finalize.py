"""Write manifest.json once every shard of the plan exists and is complete.

    python -m preprocess finalize shards/fma_large

Reads plan.json (written by the features command), checks that every planned
shard exists, was made with the plan's recipe and holds exactly its planned
tracks (written or failed), then writes manifest.json atomically: every shard
with its counts and checksum, totals per split and class, the recipe, class
names, skipped and failed tracks with reasons. If shards are missing or
incomplete it names them and exits non-zero (rerun the features command, or
the missing array tasks), with what the attempt records say about each (an array task
or features command killed while computing it, by a signal or the OOM killer: its
SLURM task id, pid and host; preprocess.shard_runs). The features command runs this automatically at the
end of a run that leaves no shard missing.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from preprocess.assign import ShardSpec
from preprocess.errors import FeaturesError
from preprocess.plan import PLAN_NAME, read_plan, shard_status
from preprocess.shard_runs import describe_attempts
from shards import EXTRAS_FORMAT_VERSION, FORMAT_VERSION, MANIFEST_NAME, read_extra, write_manifest

log = logging.getLogger(__name__)


def build_manifest(folder: Path, plan: dict) -> tuple[dict | None, list[str]]:
    """The manifest for ``folder``'s shards, or None and the problems (missing/incomplete shards)."""
    class_names = plan["class_names"]
    entries, failed, padded, problems = [], [], [], []
    genre_counts: dict[str, list[np.ndarray]] = {}  # split -> per shard, tracks per genre (genres_all)
    versions: dict = {}
    extras: dict = {}  # what the shards' extra datasets are (the same in every shard of a plan)
    for spec in (ShardSpec.from_dict(d) for d in plan["shards"]):
        contents, problem = shard_status(folder / spec.name, spec, plan)
        if problem is not None:
            said = describe_attempts(folder, spec.name)  # e.g. a SLURM task killed while computing it
            problems.append(f"{spec.name}: {problem}" + (f"; {said}" if said else ""))
            continue
        labelled = contents.label[contents.label >= 0]  # NO_LABEL: a track without a top genre
        counts = np.bincount(labelled, minlength=len(class_names)).tolist()
        entries.append(
            {
                "name": spec.name,
                "split": spec.split,
                "shard_index": spec.shard_index,
                "num_shards": spec.num_shards,
                "num_tracks": contents.num_tracks,
                "num_failed": len(contents.failed),
                "num_padded": len(contents.padded),
                "checksum": contents.checksum,
                "class_counts": counts,
            }
        )
        failed += [{"track_id": int(t), "reason": r, "shard": spec.name} for t, r in contents.failed]
        padded += [
            {"track_id": int(t), "seconds": round(x, 3), "shard": spec.name} for t, x in contents.padded
        ]
        versions = versions or contents.versions
        extras = extras or contents.extras
        if "genres" in contents.extras:
            genre_counts.setdefault(spec.split, []).append(read_extra(contents.path, "genres").sum(axis=0))
    if problems:
        return None, problems
    totals = {}
    for split in sorted({e["split"] for e in entries}):
        per_class = np.sum([e["class_counts"] for e in entries if e["split"] == split], axis=0)
        totals[split] = {
            "tracks": int(per_class.sum()),
            "per_class": {name: int(c) for name, c in zip(class_names, per_class, strict=True)},
        }
        if "genres" in extras:  # genres_all: every track counts, labelled or not; tracks per genre
            titles = [row["title"] for row in extras["genres"]["genre_table"]]
            per_genre = np.sum(genre_counts.get(split, [np.zeros(len(titles))]), axis=0)
            totals[split]["tracks"] = sum(e["num_tracks"] for e in entries if e["split"] == split)
            totals[split]["no_top_genre"] = totals[split]["tracks"] - int(per_class.sum())
            totals[split]["per_genre"] = {t: int(c) for t, c in zip(titles, per_genre, strict=True)}
    manifest = {
        "format_version": EXTRAS_FORMAT_VERSION if extras else FORMAT_VERSION,
        "subset": plan["subset"],
        "recipe": plan["recipe"],
        "class_names": class_names,
        "shard_size": plan["shard_size"],
        "shards": entries,
        "totals": totals,
        "skipped": plan["skipped"],
        "selection": plan.get("selection", {}),
        "failed": sorted(failed, key=lambda f: f["track_id"]),
        "padded": sorted(padded, key=lambda f: f["track_id"]),
        "versions": versions,
    }
    if extras:
        manifest["extras"] = extras
    return manifest, []


def finalize_shards(folder: str | Path) -> tuple[Path | None, list[str]]:
    """Write ``folder/manifest.json`` if every planned shard is complete.

    An identical existing manifest is left untouched (a rerun rewrites nothing).

    Returns
    -------
    (Path or None, list of str)
        The manifest path (None if not written) and the problems found.
    """
    folder = Path(folder)
    plan = read_plan(folder)
    if plan is None:
        raise FeaturesError(f"{folder / PLAN_NAME}: no plan. Run the features stage first (`make features`).")
    manifest, problems = build_manifest(folder, plan)
    if manifest is None:
        return None, problems
    path = folder / MANIFEST_NAME
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return path, []
    return write_manifest(folder, manifest), []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the shard folder (holds plan.json)")


def main(args: argparse.Namespace) -> int:
    """``python -m preprocess finalize``: 0 written, 1 shards missing or incomplete (named on stderr)."""
    from shards.cli import EXIT_FAILURES, EXIT_OK

    path, problems = finalize_shards(args.folder)
    if path is None:
        for problem in problems:
            log.error("  %s", problem)
        log.error(
            "%d shards of %s are missing or incomplete (listed above). Rerun `make features` (same "
            "settings) or the missing array tasks, then finalize again.",
            len(problems),
            args.folder,
        )
        return EXIT_FAILURES
    print(f"wrote {path}")
    return EXIT_OK
