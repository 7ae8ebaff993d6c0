"""Write manifest.json once every shard of the plan exists and is complete.

    python -m preprocess finalize shards/fma_large

Reads plan.json (written by the features command), checks that every planned
shard exists, was made with the plan's recipe and holds exactly its planned
tracks (written or failed), then writes manifest.json atomically: every shard
with its counts and checksum, totals per split and class, the recipe, class
names, skipped and failed tracks with reasons. If shards are missing or
incomplete it names them and exits non-zero (rerun the features command, or
the missing array tasks). The features command runs this automatically at the
end of a run that leaves no shard missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from preprocess.assign import ShardSpec
from shards import FORMAT_VERSION, MANIFEST_NAME, ShardError, read_shard, write_manifest

PLAN_NAME = "plan.json"


def build_manifest(folder: Path, plan: dict) -> tuple[dict | None, list[str]]:
    """The manifest for ``folder``'s shards, or None and the problems (missing/incomplete shards)."""
    class_names = plan["class_names"]
    entries, failed, problems = [], [], []
    versions: dict = {}
    for spec in (ShardSpec.from_dict(d) for d in plan["shards"]):
        path = folder / spec.name
        if not path.exists():
            problems.append(f"{spec.name}: missing")
            continue
        try:
            contents = read_shard(path)
        except ShardError as exc:
            problems.append(f"{spec.name}: unreadable ({exc})")
            continue
        done = set(contents.track_id.tolist()) | {t for t, _ in contents.failed}
        if contents.recipe != plan["recipe"]:
            problems.append(f"{spec.name}: made with another recipe")
            continue
        if done != set(spec.track_ids):
            problems.append(f"{spec.name}: holds other tracks than planned")
            continue
        counts = np.bincount(contents.label, minlength=len(class_names)).tolist()
        entries.append({
            "name": spec.name, "split": spec.split, "shard_index": spec.shard_index,
            "num_shards": spec.num_shards, "num_tracks": contents.num_tracks,
            "num_failed": len(contents.failed), "checksum": contents.checksum, "class_counts": counts,
        })
        failed += [{"track_id": int(t), "reason": r, "shard": spec.name} for t, r in contents.failed]
        versions = versions or contents.versions
    if problems:
        return None, problems
    totals = {}
    for split in sorted({e["split"] for e in entries}):
        per_class = np.sum([e["class_counts"] for e in entries if e["split"] == split], axis=0)
        totals[split] = {"tracks": int(per_class.sum()),
                         "per_class": {name: int(c) for name, c in zip(class_names, per_class, strict=True)}}
    manifest = {
        "format_version": FORMAT_VERSION, "subset": plan["subset"], "recipe": plan["recipe"],
        "class_names": class_names, "shard_size": plan["shard_size"], "shards": entries, "totals": totals,
        "skipped": plan["skipped"], "selection": plan.get("selection", {}),
        "failed": sorted(failed, key=lambda f: f["track_id"]), "versions": versions,
    }
    return manifest, []


def finalize_shards(folder: str | Path, log=print) -> tuple[Path | None, list[str]]:
    """Write ``folder/manifest.json`` if every planned shard is complete.

    An identical existing manifest is left untouched (a rerun rewrites nothing).

    Returns
    -------
    (Path or None, list of str)
        The manifest path (None if not written) and the problems found.
    """
    folder = Path(folder)
    plan_path = folder / PLAN_NAME
    if not plan_path.is_file():
        raise ShardError(f"{plan_path}: no plan. Run the features stage first (`make features`).")
    try:
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{plan_path}: unreadable plan ({exc}). Rerun the features stage.") from exc
    manifest, problems = build_manifest(folder, plan)
    if manifest is None:
        for p in problems:
            log(f"  {p}")
        return None, problems
    path = folder / MANIFEST_NAME
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return path, []
    return write_manifest(folder, manifest), []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the shard folder (holds plan.json)")


def main(args: argparse.Namespace) -> int:
    try:
        path, problems = finalize_shards(args.folder, log=lambda m: print(m, file=sys.stderr))
    except ShardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if path is None:
        print(f"error: {len(problems)} shards of {args.folder} are missing or incomplete (listed above). "
              f"Rerun `make features` (same settings) or the missing array tasks, then finalize again.",
              file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0
