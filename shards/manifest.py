"""The shard set's ``manifest.json``: written last, read first.

Schema (plain JSON)::

    {
      "format_version": 1,
      "subset": "large",
      "recipe": {...},                       # the feature recipe, as in every shard
      "class_names": ["Blues", ...],         # label i is class_names[i]
      "shard_size": 1000,
      "shards": [                            # one entry per shard file
        {"name": "train-00000-of-00050.h5", "split": "train", "shard_index": 0,
         "num_shards": 50, "num_tracks": 987, "num_failed": 2, "num_padded": 1,
         "checksum": "sha256:...", "class_counts": [..one count per class..]},
        ...
      ],
      "totals": {"train": {"tracks": 40000, "per_class": {"Blues": 100, ...}}, ...},
      "skipped": {"<reason>": [track ids], ...},   # never assigned to a shard
      "failed": [{"track_id": 2624, "reason": "...", "shard": "train-..."}, ...],
      "padded": [{"track_id": 1234, "seconds": 17.3, "shard": "train-..."}, ...],  # short clips
      "versions": {...}
    }
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from shards.atomic import atomic_write_text
from shards.errors import ShardError
from shards.format import FORMAT_VERSIONS, MANIFEST_NAME, SPLITS, parse_shard_name

REQUIRED_KEYS = ("format_version", "subset", "recipe", "class_names", "shards", "totals")
REQUIRED_SHARD_KEYS = ("name", "split", "num_tracks", "checksum")


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    """Validate ``manifest`` and write ``folder/manifest.json`` atomically."""
    path = Path(folder) / MANIFEST_NAME
    _validate(path, manifest)
    atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(folder: str | os.PathLike) -> dict:
    """Read and validate ``folder/manifest.json`` (or a path to the file itself).

    Raises
    ------
    ShardError
        If it is missing, not JSON, or lacks a required field; the message names
        the file and the fix.
    """
    path = Path(folder)
    if path.is_dir() or path.suffix != ".json":
        path = path / MANIFEST_NAME
    if not path.exists():
        raise ShardError(
            f"{path}: no manifest. The features stage writes it last, once every shard "
            f"exists: run `make features` (or `python -m preprocess finalize {path.parent}`)."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"{path}: not a readable JSON manifest ({exc}). Rerun the features stage.") from exc
    _validate(path, manifest)
    return manifest


def _validate(path: Path, manifest: dict) -> None:
    def bad(problem: str) -> ShardError:
        return ShardError(f"{path}: {problem}. Rerun the features stage to rewrite it.")

    if not isinstance(manifest, dict):
        raise bad("manifest is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise bad(f"manifest lacks {missing}")
    if manifest["format_version"] not in FORMAT_VERSIONS:
        raise bad(f"format_version {manifest['format_version']!r}, expected one of {FORMAT_VERSIONS}")
    names = manifest["class_names"]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise bad("class_names must be a non-empty list of strings")
    for entry in manifest["shards"]:
        lacking = [k for k in REQUIRED_SHARD_KEYS if k not in entry]
        if lacking:
            raise bad(f"shard entry {entry.get('name', '?')} lacks {lacking}")
        try:
            split, _, _ = parse_shard_name(entry["name"])
        except ValueError as exc:
            raise bad(str(exc)) from exc
        if split != entry["split"] or split not in SPLITS:
            raise bad(f"shard {entry['name']} is listed under split {entry['split']!r}")


def shard_entries(manifest: dict, split: str) -> list[dict]:
    """The manifest's shard entries of one split, in shard order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return sorted((e for e in manifest["shards"] if e["split"] == split), key=lambda e: e["name"])
