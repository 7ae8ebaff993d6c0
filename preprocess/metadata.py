"""Read FMA's ``tracks.csv`` and select the tracks the features stage decodes.

Selection (the reference project's, made explicit), for the default target ``genre_top``:

1. rows of the subset, with FMA's nested meaning (``medium`` = small + medium rows);
2. a non-null ``('track', 'genre_top')`` (others are skipped: "no genre_top");
   a name outside the 16 top-level genres is skipped and reported, not guessed;
3. not one of FMA's known-bad ids (:data:`preprocess.fma.KNOWN_BAD`), unless
   ``skip_known_bad=False``;
4. ``('track', 'duration') > min_duration`` (29 s by default; None turns it off).

Target ``genres_all`` (multi-label genres over FMA's whole taxonomy) replaces step 2: every track
with at least one genre in ``('track', 'genres_all')`` (others are skipped: "no genres"), each
with its genres (closed under the parents of ``genres.csv``, :mod:`preprocess.genres`) and, as
label, its top-level genre's class or :data:`shards.NO_LABEL` (-1) where it has none (more than
half of fma_large). A cell that does not parse as a list of genre ids, or names an id that
genres.csv does not list, is an error naming the track, never skipped quietly.

Labels are positions in :data:`preprocess.fma.CLASS_NAMES`; splits come from
``('set', 'split')`` with FMA's ``training`` renamed ``train`` (shard names).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from preprocess.fma import CLASS_NAMES, KNOWN_BAD, SUBSETS
from preprocess.genres import GenreTable, genres_csv_path, load_genres
from shards import NO_LABEL
from shards.errors import FmaGenreError

REQUIRED_COLUMNS = (("set", "split"), ("set", "subset"), ("track", "genre_top"), ("track", "duration"))
GENRES_ALL_COLUMN = ("track", "genres_all")
SPLIT_NAMES = {"training": "train", "validation": "validation", "test": "test"}
DEFAULT_MIN_DURATION = 29.0
# What a features run selects and labels: the 16 top-level genres (the reference's), or every
# genre of the taxonomy (multi-label, with the top-level genre as label where there is one).
TARGETS = ("genre_top", "genres_all")
DEFAULT_TARGET = "genre_top"


class MetadataError(FmaGenreError, ValueError):
    """tracks.csv is missing, empty or not shaped like FMA's; the message names file and column.

    (Also a ``ValueError``, as it was before :class:`FmaGenreError` existed.)
    """


@dataclass(frozen=True)
class Selection:
    """The tracks to decode and the ones skipped, with reasons.

    Attributes
    ----------
    tracks : dict
        split ("train" | "validation" | "test") -> list of (track_id, label), sorted by id
        (label :data:`shards.NO_LABEL` for a track without a top-level genre: target genres_all).
    skipped : dict
        reason -> sorted list of track ids never assigned to a shard.
    genres : dict or None
        Target genres_all: track id -> its genre ids (sorted, ancestors included) for every
        selected track; None for genre_top.
    genre_table : GenreTable or None
        Target genres_all: the genres of genres.csv (the multi-hot columns).
    """

    tracks: dict[str, list[tuple[int, int]]]
    skipped: dict[str, list[int]] = field(default_factory=dict)
    genres: dict[int, tuple[int, ...]] | None = None
    genre_table: GenreTable | None = None

    def num_tracks(self) -> int:
        return sum(len(v) for v in self.tracks.values())

    def genre_summary(self) -> dict | None:
        """Target genres_all: ``selected`` tracks, ``no_top_genre`` (those labelled NO_LABEL),
        ``genres`` (in genres.csv) and ``genres_in_train`` (with at least one training track);
        None for genre_top."""
        if self.genres is None or self.genre_table is None:
            return None
        in_train = {g for tid, _ in self.tracks.get("train", []) for g in self.genres[tid]}
        return {
            "selected": self.num_tracks(),
            "no_top_genre": sum(label == NO_LABEL for v in self.tracks.values() for _, label in v),
            "genres": len(self.genre_table),
            "genres_in_train": len(in_train),
        }


def tracks_csv_path(fma_dir: str | os.PathLike) -> Path:
    """Where FMA's metadata zip puts tracks.csv: ``FMA_DIR/fma_metadata/tracks.csv``."""
    return Path(fma_dir) / "fma_metadata" / "tracks.csv"


def load_tracks(path: str | os.PathLike) -> pd.DataFrame:
    """Load tracks.csv as FMA ships it (3 header lines, two-level columns).

    Works under pandas 2.x and 3.x. Only the columns the selection needs are
    checked; list columns are left as strings (nothing here needs them).

    Returns
    -------
    pd.DataFrame
        Index ``track_id`` (int), two-level columns.

    Raises
    ------
    MetadataError
        Missing or empty file, wrong header shape, a missing required column,
        or a track id that is not an integer.
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(
            f"{path}: tracks.csv not found. Put FMA's fma_metadata/ under FMA_DIR "
            f"(`make download`), or generate a mini-FMA (`make demo`)."
        )
    if path.stat().st_size == 0:
        raise MetadataError(f"{path}: empty file. Download fma_metadata.zip again (`make download`).")
    try:
        frame = pd.read_csv(path, index_col=0, header=[0, 1], low_memory=False)
    except pd.errors.EmptyDataError as exc:
        raise MetadataError(f"{path}: empty file ({exc}). Download fma_metadata.zip again.") from exc
    except (pd.errors.ParserError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise MetadataError(
            f"{path}: cannot be read as FMA's tracks.csv with two header lines ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(frame.columns, pd.MultiIndex) or frame.columns.nlevels != 2:
        raise MetadataError(f"{path}: expected two header lines (e.g. 'track' / 'genre_top'), found one")
    if frame.index.name != "track_id":
        raise MetadataError(
            f"{path}: wrong header shape: the third line must start with 'track_id' "
            f"(FMA's 3-line header), found index name {frame.index.name!r}"
        )
    for column in REQUIRED_COLUMNS:
        if column not in frame.columns:
            raise MetadataError(f"{path}: column {column} is missing (needed to select tracks)")
    try:
        frame.index = frame.index.astype("int64")
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"{path}: column 'track_id' holds non-integer values ({exc})") from exc
    if frame.index.has_duplicates:
        dup = frame.index[frame.index.duplicated()][:5].tolist()
        raise MetadataError(f"{path}: column 'track_id' has duplicate ids, e.g. {dup}")
    return frame


def select_tracks(
    frame: pd.DataFrame,
    subset: str,
    *,
    skip_known_bad: bool = True,
    min_duration: float | None = DEFAULT_MIN_DURATION,
    source: str = "tracks.csv",
    target: str = DEFAULT_TARGET,
    genre_table: GenreTable | None = None,
) -> Selection:
    """Choose the tracks of ``subset`` to decode, with labels and splits.

    Parameters
    ----------
    frame : pd.DataFrame
        From :func:`load_tracks`.
    subset : {"small", "medium", "large"}
    skip_known_bad : bool
        Skip :data:`preprocess.fma.KNOWN_BAD` ids (the reference did).
    min_duration : float or None
        Skip tracks whose ``('track', 'duration')`` is <= this; None keeps all.
    source : str
        Named in error messages.
    target : {"genre_top", "genres_all"}
        What is selected and labelled (see the module doc).
    genre_table : GenreTable
        FMA's genres (genres.csv); needed for target genres_all.

    Returns
    -------
    Selection

    Raises
    ------
    MetadataError
        Target genres_all: no ``('track', 'genres_all')`` column, or cells that do not parse
        or name unknown genre ids (each track named).
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if target == "genres_all" and genre_table is None:
        raise ValueError("target genres_all needs the genre table (genres.csv)")
    wanted = set(SUBSETS[: SUBSETS.index(subset) + 1])
    subset_col = frame[("set", "subset")].astype("string")
    rows = frame[subset_col.isin(wanted).fillna(False).to_numpy(dtype=bool)]

    genre = rows[("track", "genre_top")]
    split = rows[("set", "split")]
    duration = pd.to_numeric(rows[("track", "duration")], errors="coerce")
    genres = (
        None if genre_table is None or target != "genres_all" else parse_genres_all(rows, genre_table, source)
    )
    label_of = {name: i for i, name in enumerate(CLASS_NAMES)}
    tracks: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLIT_NAMES.values()}
    skipped: dict[str, list[int]] = {}

    def skip(reason: str, tid: int) -> None:
        skipped.setdefault(reason, []).append(tid)

    for tid, g, s, d in zip(
        rows.index.tolist(), genre.tolist(), split.tolist(), duration.tolist(), strict=True
    ):
        no_top = g is None or pd.isna(g) or str(g).strip() == ""
        if genres is None and no_top:
            skip("no genre_top", tid)
        elif genres is not None and not genres[tid]:
            skip("no genres", tid)
        elif not no_top and str(g) not in label_of:
            skip(f"genre_top {str(g)!r} is not one of the 16 top-level genres", tid)
        elif s is None or pd.isna(s) or str(s) not in SPLIT_NAMES:
            skip(f"('set', 'split') is {s!r}, not training/validation/test", tid)
        elif skip_known_bad and tid in KNOWN_BAD:
            skip(KNOWN_BAD[tid], tid)
        elif min_duration is not None and pd.isna(d):
            skip(f"no ('track', 'duration') in {source}", tid)
        elif min_duration is not None and d <= min_duration:
            skip(f"duration <= {min_duration:g} s in {source}", tid)
        else:
            tracks[SPLIT_NAMES[str(s)]].append((int(tid), NO_LABEL if no_top else label_of[str(g)]))
    selected = {t for v in tracks.values() for t, _ in v}
    return Selection(
        tracks={k: sorted(v) for k, v in tracks.items()},
        skipped={k: sorted(v) for k, v in sorted(skipped.items())},
        genres=None if genres is None else {t: genres[t] for t in sorted(selected)},
        genre_table=genre_table if genres is not None else None,
    )


def parse_genres_all(rows: pd.DataFrame, table: GenreTable, source: str) -> dict[int, tuple[int, ...]]:
    """Every row's ``('track', 'genres_all')``: track id -> genre ids with their ancestors, sorted.

    A cell is a Python list literal of genre ids, as FMA writes it (``[]`` for none).

    Raises
    ------
    MetadataError
        Naming every track (the first few, and how many) whose cell is empty, does not parse as
        a list of integers, or names a genre id that genres.csv does not list.
    """
    if GENRES_ALL_COLUMN not in rows.columns:
        raise MetadataError(
            f"{source}: column {GENRES_ALL_COLUMN} is missing (needed for --target genres_all)"
        )
    out: dict[int, tuple[int, ...]] = {}
    problems: list[str] = []
    for tid, cell in zip(rows.index.tolist(), rows[GENRES_ALL_COLUMN].tolist(), strict=True):
        ids = _genre_ids(cell)
        if ids is None:
            problems.append(f"track {tid}: {cell!r} is not a list of genre ids like [12, 25]")
            continue
        try:
            out[int(tid)] = table.closure(ids)
        except KeyError as exc:
            problems.append(f"track {tid}: genre id {exc.args[0]} is not in genres.csv")
    if problems:
        raise MetadataError(
            f"{source}: {len(problems)} {'track has' if len(problems) == 1 else 'tracks have'} an unusable "
            f"{GENRES_ALL_COLUMN} cell: "
            + "; ".join(problems[:5])
            + ("; ..." if len(problems) > 5 else "")
            + ". tracks.csv and genres.csv must come from the same fma_metadata.zip "
            "(`make download` fetches it again)."
        )
    return out


def _genre_ids(cell) -> list[int] | None:
    """The genre ids of a ``genres_all`` cell, or None if it is not a list literal of integers."""
    if not isinstance(cell, str):
        return None
    try:
        value = ast.literal_eval(cell.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in value):
        return None
    return list(value)


def load_selection(
    fma_dir: str | os.PathLike,
    subset: str,
    *,
    skip_known_bad: bool = True,
    min_duration: float | None = DEFAULT_MIN_DURATION,
    target: str = DEFAULT_TARGET,
) -> Selection:
    """:func:`load_tracks` on ``FMA_DIR/fma_metadata/tracks.csv`` (and, for target genres_all,
    :func:`preprocess.genres.load_genres` on ``genres.csv`` beside it), then :func:`select_tracks`."""
    path = tracks_csv_path(fma_dir)
    frame = load_tracks(path)
    table = load_genres(genres_csv_path(fma_dir)) if target == "genres_all" else None
    return select_tracks(
        frame,
        subset,
        skip_known_bad=skip_known_bad,
        min_duration=min_duration,
        source=path.name,
        target=target,
        genre_table=table,
    )
