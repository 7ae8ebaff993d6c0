"""Read FMA's ``tracks.csv`` and select the tracks the features stage decodes.

Selection (the reference project's, made explicit):

1. rows of the subset, with FMA's nested meaning (``medium`` = small + medium rows);
2. a non-null ``('track', 'genre_top')`` (others are skipped: "no genre_top");
   a name outside the 16 top-level genres is skipped and reported, not guessed;
3. not one of FMA's known-bad ids (:data:`preprocess.fma.KNOWN_BAD`), unless
   ``skip_known_bad=False``;
4. ``('track', 'duration') > min_duration`` (29 s by default; None turns it off).

Labels are positions in :data:`preprocess.fma.CLASS_NAMES`; splits come from
``('set', 'split')`` with FMA's ``training`` renamed ``train`` (shard names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from preprocess.fma import CLASS_NAMES, KNOWN_BAD, SUBSETS
from shards.errors import FmaGenreError

REQUIRED_COLUMNS = (("set", "split"), ("set", "subset"), ("track", "genre_top"), ("track", "duration"))
SPLIT_NAMES = {"training": "train", "validation": "validation", "test": "test"}
DEFAULT_MIN_DURATION = 29.0


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
        split ("train" | "validation" | "test") -> list of (track_id, label), sorted by id.
    skipped : dict
        reason -> sorted list of track ids never assigned to a shard.
    """

    tracks: dict[str, list[tuple[int, int]]]
    skipped: dict[str, list[int]] = field(default_factory=dict)

    def num_tracks(self) -> int:
        return sum(len(v) for v in self.tracks.values())


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

    Returns
    -------
    Selection
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    wanted = set(SUBSETS[: SUBSETS.index(subset) + 1])
    subset_col = frame[("set", "subset")].astype("string")
    rows = frame[subset_col.isin(wanted).fillna(False).to_numpy(dtype=bool)]

    genre = rows[("track", "genre_top")]
    split = rows[("set", "split")]
    duration = pd.to_numeric(rows[("track", "duration")], errors="coerce")
    label_of = {name: i for i, name in enumerate(CLASS_NAMES)}
    tracks: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLIT_NAMES.values()}
    skipped: dict[str, list[int]] = {}

    def skip(reason: str, tid: int) -> None:
        skipped.setdefault(reason, []).append(tid)

    for tid, g, s, d in zip(
        rows.index.tolist(), genre.tolist(), split.tolist(), duration.tolist(), strict=True
    ):
        if g is None or pd.isna(g) or str(g).strip() == "":
            skip("no genre_top", tid)
        elif str(g) not in label_of:
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
            tracks[SPLIT_NAMES[str(s)]].append((int(tid), label_of[str(g)]))
    return Selection(
        tracks={k: sorted(v) for k, v in tracks.items()},
        skipped={k: sorted(v) for k, v in sorted(skipped.items())},
    )


def load_selection(
    fma_dir: str | os.PathLike,
    subset: str,
    *,
    skip_known_bad: bool = True,
    min_duration: float | None = DEFAULT_MIN_DURATION,
) -> Selection:
    """:func:`load_tracks` on ``FMA_DIR/fma_metadata/tracks.csv``, then :func:`select_tracks`."""
    path = tracks_csv_path(fma_dir)
    frame = load_tracks(path)
    return select_tracks(
        frame, subset, skip_known_bad=skip_known_bad, min_duration=min_duration, source=path.name
    )
