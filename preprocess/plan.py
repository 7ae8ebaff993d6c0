"""The shard plan of a features run: built from tracks.csv and the options, kept in OUT/plan.json.

The plan says which tracks go into which shard (``preprocess.assign``), with the recipe, the
class names and the tracks skipped by the selection. It is a pure function of tracks.csv and
the plan options, so every process (a local run, each SLURM array task, the SLURM submitter,
finalize) computes or reads the same one. A features run writes it first into OUT; a later run
with other settings into the same OUT is refused (or, with --force, replaces the shard set).

A shard of the plan is *complete* when its file is readable, was made with the plan's recipe
and holds exactly its planned tracks, each written or recorded as failed
(:func:`shard_status`): the features run skips it, the SLURM submitter does not resubmit it,
finalize lists it in the manifest.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from preprocess import fma
from preprocess.assign import ShardSpec, assign_shards
from preprocess.audio_source import AudioSource, find_audio_source
from preprocess.errors import FeaturesError
from preprocess.metadata import DEFAULT_TARGET, Selection, load_selection, tracks_csv_path
from preprocess.options import FeatureOptions
from shards import MANIFEST_NAME, ShardContents, ShardError, atomic_write_text, parse_shard_name, read_shard

PLAN_NAME = "plan.json"
PLAN_VERSION = 1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardPlan:
    """A features run's plan.

    Attributes
    ----------
    audio : AudioSource
        Where the subset's MP3s are read from: the unpacked tree or the zip.
    selection : Selection
        The tracks selected (per split) and skipped (per reason).
    specs : list of ShardSpec
        Every shard of the plan, in order (split, then shard index).
    data : dict
        plan.json's content: plain data, the same for the same tracks.csv and options.
    """

    audio: AudioSource
    selection: Selection
    specs: list[ShardSpec]
    data: dict

    @property
    def recipe(self) -> dict:
        return self.data["recipe"]

    @property
    def genre_table(self) -> list[dict] | None:
        """Target genres_all: the genre table rows (``preprocess.genres.GenreTable.rows``); else None."""
        return self.data.get("genre_table")


def check_dataset(fma_dir: Path, subset: str, audio_zip: Path | None = None) -> AudioSource:
    """Where the subset's audio is (tree or zip: :func:`~preprocess.audio_source.find_audio_source`).

    FeaturesError naming where it looked if the metadata is absent; AudioSourceError if the
    audio is (or if the zip's directory is damaged).
    """
    csv = tracks_csv_path(fma_dir)
    if not csv.is_file():
        raise FeaturesError(
            f"no dataset at FMA_DIR={fma_dir}: looked for {csv} (and {fma_dir}/fma_{subset}/). "
            f"Run `make download FMA_DIR={fma_dir} SUBSET={subset}` for the real FMA, or `make demo` "
            f"for a generated mini-FMA (or pass --fma-dir where fma_metadata/ lives)."
        )
    return find_audio_source(fma_dir, subset, audio_zip)


def build_plan(options: FeatureOptions) -> ShardPlan:
    """Select the tracks and cut them into shards: a pure function of tracks.csv and the plan options."""
    audio = check_dataset(options.fma_dir, options.subset, options.audio_zip)
    selection = load_selection(
        options.fma_dir,
        options.subset,
        skip_known_bad=options.skip_known_bad,
        min_duration=options.min_duration,
        target=options.target,
    )
    specs = assign_shards(selection.tracks, options.shard_size, selection.genres)
    if not specs:
        raise FeaturesError(
            f"no track of subset {options.subset!r} in {tracks_csv_path(options.fma_dir)} survives the "
            f"selection (skipped: { {k: len(v) for k, v in selection.skipped.items()} })"
        )
    data = {
        "plan_version": PLAN_VERSION,
        "subset": options.subset,
        "recipe": options.recipe.to_dict(),
        "class_names": list(fma.CLASS_NAMES),
        "shard_size": options.shard_size,
        "selection": {
            "skip_known_bad": options.skip_known_bad,
            "min_duration": options.min_duration,
            "keep_silence": options.keep_silence,
        },
        "shards": [s.to_dict() for s in specs],
        "skipped": selection.skipped,
    }
    if options.fine is not None:  # only then: a plan without it is the same as before
        data["fine_recipe"] = options.fine.to_dict()
    # Recorded only when not the default: default plans stay as they were.
    if options.target != DEFAULT_TARGET:
        data["selection"]["target"] = options.target
    if selection.genre_table is not None:
        data["genre_table"] = selection.genre_table.rows()
    return ShardPlan(audio=audio, selection=selection, specs=specs, data=data)


def plan_extras(plan: dict) -> dict:
    """What every shard of ``plan`` (plan.json's data) says of its extra datasets
    (the ``extras`` attribute, see :data:`shards.EXTRAS`); empty for a plain shard set."""
    extras = {}
    if "fine_recipe" in plan:
        extras["mel_fine"] = {"recipe": plan["fine_recipe"]}
    if "genre_table" in plan:  # --target genres_all (preprocess.genres.genres_extra)
        extras["genres"] = {"genre_table": plan["genre_table"]}
    return extras


def read_plan(out: Path) -> dict | None:
    """The plan in ``out``, None if there is none; FeaturesError if unreadable."""
    path = Path(out) / PLAN_NAME
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeaturesError(f"{path}: unreadable plan ({exc}). Delete it and rerun, or use --force.") from exc


def plan_differences(old: dict, new: dict) -> list[str]:
    """Human-readable keys in which two plans differ (empty if they are equal)."""
    diffs = []
    for key in ("subset", "class_names", "shard_size", "selection", "fine_recipe"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if old.get("genre_table") != new.get("genre_table"):
        diffs.append("genre_table (genres.csv changed, or another --target)")
    if old.get("recipe") != new.get("recipe"):
        a, b = old.get("recipe") or {}, new.get("recipe") or {}
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        diffs.append("recipe: " + ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in changed))
    if not diffs and old.get("shards") != new.get("shards"):
        diffs.append("shard assignment (tracks.csv changed?)")
    if not diffs and old != new:
        diffs.append(", ".join(sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))))
    return diffs


def plan_changes(out: Path, plan: ShardPlan) -> list[str]:
    """How ``out``'s plan.json differs from ``plan`` (empty: the same, or no plan there yet)."""
    old = read_plan(out)
    return [] if old is None else plan_differences(old, plan.data)


def changed_plan_error(out: Path, changes: list[str], fix: str) -> FeaturesError:
    """The refusal to mix shards made with other settings into ``out``."""
    return FeaturesError(
        f"{Path(out) / PLAN_NAME} was made with different settings ({'; '.join(changes)}). "
        f"Its shards would mix with these. {fix}"
    )


def write_plan(out: Path, plan: ShardPlan) -> None:
    """Write ``out/plan.json`` atomically, unless it already holds exactly this plan."""
    text = json.dumps(plan.data, indent=1, sort_keys=True) + "\n"
    path = Path(out) / PLAN_NAME
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def remove_unplanned(out: Path, plan: ShardPlan) -> None:
    """Delete the manifest and the shards in ``out`` that ``plan`` does not name (--force)."""
    planned = {s.name for s in plan.specs}
    for path in Path(out).glob("*.h5"):
        try:
            parse_shard_name(path.name)
        except ValueError:
            continue
        if path.name not in planned:
            path.unlink()
    (Path(out) / MANIFEST_NAME).unlink(missing_ok=True)


def shard_status(path: Path, spec: ShardSpec, plan: dict) -> tuple[ShardContents | None, str | None]:
    """Whether ``path`` is a complete shard of ``spec`` made as ``plan`` (plan.json's data) says:
    its recipe and its extra datasets (:func:`plan_extras`).

    Cheap: reads attributes and ids, not the images (the checksum was verified when the
    shard was written; ``verify`` re-checks the data).

    Returns
    -------
    (ShardContents or None, str or None)
        The shard's contents (None if missing or unreadable) and the problem (None: complete).
    """
    if not path.exists():
        return None, "missing"
    try:
        contents = read_shard(path)
    except ShardError as exc:
        return None, f"unreadable ({exc})"
    if contents.recipe != plan["recipe"]:
        return contents, "made with another recipe"
    if contents.extras != plan_extras(plan):
        return contents, "made with other extra datasets"
    done = set(contents.track_id.tolist()) | {t for t, _ in contents.failed}
    if done != set(spec.track_ids):
        return contents, "holds other tracks than planned"
    return contents, None
