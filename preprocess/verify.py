"""Check a finished shard set: every shard readable and intact, matching the manifest.

    python -m preprocess verify shards/fma_large

For every shard listed in manifest.json: the file opens; ``mel`` is float32 of
shape (N, n_mels, n_frames) of the recipe, ``label`` and ``track_id`` (N,);
every value is finite; labels lie in [0, number of classes) (or are -1, no top-level
genre, in a set made with --target genres_all, whose ``genres`` rows hold 0/1 and whose
genre table equals the manifest's); track ids are
strictly increasing and no track is in two shards; the content checksum
recomputed from the data equals the shard's own and the manifest's; the
shard's recipe and class names equal the manifest's; an uncompressed shard's
images can be memory-mapped (a truncated file fails here). Exits 1 naming
each bad file (or a missing manifest), 0 when all is well, 2 when the folder
does not exist.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from shards import ShardError, data_layout, lowest_label, read_manifest, read_shard

log = logging.getLogger(__name__)


def verify_shards(folder: str | Path, progress: bool = False) -> list[str]:
    """Every problem found in the shard set at ``folder`` (empty list: all good).

    Each problem string starts with the file it concerns.
    """
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except ShardError as exc:
        return [str(exc)]
    recipe = manifest["recipe"]
    shape = (recipe.get("n_mels", 128), recipe.get("n_frames", 128))
    n_classes = len(manifest["class_names"])
    problems: list[str] = []
    owner: dict[int, str] = {}
    for entry in tqdm(manifest["shards"], desc="verify", unit="shard", disable=not progress):
        path = folder / entry["name"]
        try:
            contents = read_shard(path, verify=True)
            if contents.compression is None and contents.num_tracks:
                data_layout(path, "mel")  # raises on a truncated file
        except ShardError as exc:
            problems.append(str(exc))
            continue
        if contents.mel_shape[1:] != shape:
            problems.append(f"{path}: images are {contents.mel_shape[1:]}, the recipe says {shape}")
        low = lowest_label(contents.extras)
        if contents.num_tracks and (contents.label.min() < low or contents.label.max() >= n_classes):
            problems.append(f"{path}: labels outside [{low}, {n_classes})")
        if contents.checksum != entry["checksum"]:
            problems.append(
                f"{path}: checksum {contents.checksum} differs from the manifest's "
                f"{entry['checksum']} (shard replaced after finalize? rerun finalize)"
            )
        if contents.num_tracks != entry["num_tracks"]:
            problems.append(f"{path}: {contents.num_tracks} tracks, the manifest says {entry['num_tracks']}")
        if contents.recipe != recipe:
            problems.append(f"{path}: made with another recipe than the manifest's")
        if contents.extras != manifest.get("extras", {}):
            problems.append(f"{path}: its extra datasets differ from the manifest's")
        if contents.class_names != manifest["class_names"]:
            problems.append(f"{path}: class names differ from the manifest's")
        for tid in contents.track_id.tolist():
            if tid in owner:
                problems.append(f"{path}: track {tid} is also in {owner[tid]}")
            else:
                owner[tid] = entry["name"]
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the shard folder (holds manifest.json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    """``python -m preprocess verify``: 0 all good, 1 problems (each named on stderr)."""
    from shards.cli import EXIT_FAILURES, EXIT_OK, progress_disabled

    if not Path(args.folder).is_dir():
        raise ShardError(f"{args.folder}: no such folder; pass the shard set folder (it holds manifest.json)")
    problems = verify_shards(args.folder, progress=args.progress and not progress_disabled())
    for p in problems:
        log.error("%s", p)
    if problems:
        log.warning(
            "verify: %d problems in %s. Delete the named shards and rerun `make features` (it "
            "recomputes missing shards only), then `make finalize`.",
            len(problems),
            args.folder,
        )
        return EXIT_FAILURES
    print(f"verify: {args.folder} OK")
    return EXIT_OK
