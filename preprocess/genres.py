"""FMA's genre taxonomy: ``genres.csv`` read and checked, and genres as multi-hot rows.

FMA's ``fma_metadata/genres.csv`` lists every genre once (163 in the real file): index
``genre_id``, columns ``#tracks``, ``parent`` (0 for a top-level genre) and ``title``, and
``top_level`` (the root reached by following parents). A track's ``genres_all`` in tracks.csv
holds its genres and all their ancestors. The features stage's ``--target genres_all`` stores,
per track, a multi-hot row over the whole table (:meth:`GenreTable.multi_hot`; ``uint8 (N, G)``,
the ``genres`` dataset of a shard) with the table itself (:meth:`GenreTable.rows`) in the shard
and the manifest.

A genres.csv whose parents name ids it does not list, or form a cycle, or whose ``top_level``
is not the root of its parents, is refused with a :class:`GenresError` naming the file, the
genres and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from shards.errors import FmaGenreError

GENRES_COLUMNS = ("parent", "title", "top_level")
_FIX = "Download fma_metadata.zip again (`make download`), or regenerate the mini-FMA (`make demo`)."


class GenresError(FmaGenreError, ValueError):
    """genres.csv is missing, malformed or not a tree (a cycle, a parent it does not list)."""


@dataclass(frozen=True)
class GenreTable:
    """The genres of genres.csv in column order (ascending id).

    Attributes
    ----------
    ids : tuple of int
        Genre ids, strictly increasing: column ``j`` of a multi-hot row is genre ``ids[j]``.
    titles : tuple of str
    parents : tuple of int
        The parent's id, 0 for a top-level genre.
    top_levels : tuple of int
        The id of the genre's top-level genre (itself for a top-level genre).
    """

    ids: tuple[int, ...]
    titles: tuple[str, ...]
    parents: tuple[int, ...]
    top_levels: tuple[int, ...]

    def __post_init__(self) -> None:
        problems = tree_problems(self.ids, self.parents, self.top_levels)
        if problems:
            raise GenresError("genre table: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self) -> list[dict]:
        """Plain data, in column order: ``[{"id", "title", "parent", "top_level"}, ...]``."""
        return [
            {"id": i, "title": t, "parent": p, "top_level": r}
            for i, t, p, r in zip(self.ids, self.titles, self.parents, self.top_levels, strict=True)
        ]

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> GenreTable:
        """The inverse of :meth:`rows` (rows in any order)."""
        rows = sorted(rows, key=lambda r: int(r["id"]))
        return cls(
            ids=tuple(int(r["id"]) for r in rows),
            titles=tuple(str(r["title"]) for r in rows),
            parents=tuple(int(r["parent"]) for r in rows),
            top_levels=tuple(int(r["top_level"]) for r in rows),
        )

    def closure(self, genre_ids: Iterable[int]) -> tuple[int, ...]:
        """The genres and all their ancestors, sorted. KeyError for an id not in the table."""
        parent = dict(zip(self.ids, self.parents, strict=True))
        out: set[int] = set()
        for g in genre_ids:
            g = int(g)
            if g not in parent:
                raise KeyError(g)
            while g != 0 and g not in out:
                out.add(g)
                g = parent[g]
        return tuple(sorted(out))

    def multi_hot(self, genre_lists: Sequence[Iterable[int]]) -> np.ndarray:
        """Rows of 0/1 over the table's columns.

        Parameters
        ----------
        genre_lists : sequence of N iterables of genre ids (each id in the table)

        Returns
        -------
        np.ndarray, shape (N, G), uint8
        """
        column = {g: j for j, g in enumerate(self.ids)}
        out = np.zeros((len(genre_lists), len(self.ids)), dtype=np.uint8)
        for i, genres in enumerate(genre_lists):
            for g in genres:
                out[i, column[int(g)]] = 1
        return out


def tree_problems(ids: Sequence[int], parents: Sequence[int], top_levels: Sequence[int]) -> list[str]:
    """What keeps ``(ids, parents, top_levels)`` from being a genre tree (empty: none).

    Ids must be positive, unique and increasing; every parent 0 or a listed id; following parents
    must reach 0 without a cycle; ``top_level`` must be the genre reached just before 0.
    """
    if len(ids) == 0:
        return ["no genres"]
    if not (len(ids) == len(parents) == len(top_levels)):
        return ["ids, parents and top levels differ in length"]
    if min(ids) <= 0 or any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
        return ["genre ids must be positive, unique and sorted"]
    parent = dict(zip(ids, parents, strict=True))
    problems = []
    missing = sorted({(g, p) for g, p in parent.items() if p != 0 and p not in parent})
    if missing:
        problems.append(
            f"{len(missing)} genres name a parent that is not listed: "
            + ", ".join(f"genre {g} has parent {p}" for g, p in missing[:5])
        )
        return problems
    cycles: list[list[int]] = []
    done: set[int] = set()
    for start in ids:
        path: list[int] = []
        g = start
        while g != 0 and g not in done and g not in path:
            path.append(g)
            g = parent[g]
        if g in path:  # came back to a genre of this walk: a cycle
            cycle = path[path.index(g) :]
            if not any(set(cycle) == set(c) for c in cycles):
                cycles.append(cycle)
        done.update(path)
    if cycles:
        problems.append(
            "parents form a cycle: " + "; ".join(" -> ".join(str(g) for g in [*c, c[0]]) for c in cycles[:3])
        )
        return problems
    wrong = []
    for g, top in zip(ids, top_levels, strict=True):
        root = g
        while parent[root] != 0:
            root = parent[root]
        if top != root:
            wrong.append(f"genre {g}: top_level {top}, its parents lead to {root}")
    if wrong:
        problems.append(
            f"{len(wrong)} genres have a top_level other than their root: " + "; ".join(wrong[:5])
        )
    return problems


def genres_csv_path(fma_dir: str | os.PathLike) -> Path:
    """Where FMA's metadata zip puts genres.csv: ``FMA_DIR/fma_metadata/genres.csv``."""
    return Path(fma_dir) / "fma_metadata" / "genres.csv"


def load_genres(path: str | os.PathLike) -> GenreTable:
    """Read FMA's genres.csv (index ``genre_id``; columns ``parent``, ``title``, ``top_level``).

    Raises
    ------
    GenresError
        Missing or empty file, a missing column, non-integer ids, duplicate ids, a parent that
        is not listed, parents forming a cycle, a ``top_level`` that is not the root; the
        message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise GenresError(f"{path}: genres.csv not found (--target genres_all needs it). {_FIX}")
    try:
        frame = pd.read_csv(path, index_col=0)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise GenresError(
            f"{path}: cannot be read as FMA's genres.csv ({type(exc).__name__}: {exc}). {_FIX}"
        ) from exc
    if frame.index.name != "genre_id":
        raise GenresError(
            f"{path}: the first column must be 'genre_id' (FMA's genres.csv), found {frame.index.name!r}"
        )
    for column in GENRES_COLUMNS:
        if column not in frame.columns:
            raise GenresError(f"{path}: column {column!r} is missing. {_FIX}")
    try:
        ids = [int(i) for i in frame.index]
        parents = [int(p) for p in frame["parent"]]
        top_levels = [int(t) for t in frame["top_level"]]
    except (TypeError, ValueError) as exc:
        raise GenresError(f"{path}: genre_id, parent and top_level must be integers ({exc}). {_FIX}") from exc
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise GenresError(f"{path}: duplicate genre ids, e.g. {dup}. {_FIX}")
    order = np.argsort(ids, kind="stable")
    ids, parents, top_levels = ([x[i] for i in order] for x in (ids, parents, top_levels))
    titles = [str(frame["title"].iloc[i]) for i in order]
    if len(set(titles)) != len(titles):
        dup = sorted({t for t in titles if titles.count(t) > 1})[:5]
        raise GenresError(f"{path}: genre titles must be unique (they name the labels), e.g. {dup}. {_FIX}")
    problems = tree_problems(ids, parents, top_levels)
    if problems:
        raise GenresError(f"{path}: not a genre tree: {'; '.join(problems)}. {_FIX}")
    return GenreTable(tuple(ids), tuple(titles), tuple(parents), tuple(top_levels))


def genres_extra(table_rows: list[dict], genre_lists: Sequence[Iterable[int]]) -> tuple[np.ndarray, dict]:
    """A shard's ``genres`` dataset and what describes it, for ``shards.write_shard(extras=...)``.

    Parameters
    ----------
    table_rows : list of dict
        :meth:`GenreTable.rows` (as the plan keeps them).
    genre_lists : sequence of N iterables of genre ids, one per written track

    Returns
    -------
    (np.ndarray (N, G) uint8, {"genre_table": table_rows})
    """
    table = GenreTable.from_rows(table_rows)
    return table.multi_hot(genre_lists), {"genre_table": table.rows()}
