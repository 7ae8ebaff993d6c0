"""Metadata side of the generated mini-FMA: the genre tree and FMA-shaped ``tracks.csv`` rows.

``tracks.csv`` is written by pandas from a frame with two-level columns (FMA's 52 columns, in
FMA's order) and an index named ``track_id``, so it has FMA's three header lines and loads
with FMA's own recipe ``pd.read_csv(path, index_col=0, header=[0, 1])`` followed by
``ast.literal_eval`` on the list columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from preprocess.fma import TOP_GENRES

# FMA's tracks.csv columns, in file order (level 0, level 1).
TRACKS_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    [
        ("album", c)
        for c in (
            "comments",
            "date_created",
            "date_released",
            "engineer",
            "favorites",
            "id",
            "information",
            "listens",
            "producer",
            "tags",
            "title",
            "tracks",
            "type",
        )
    ]
    + [
        ("artist", c)
        for c in (
            "active_year_begin",
            "active_year_end",
            "associated_labels",
            "bio",
            "comments",
            "date_created",
            "favorites",
            "id",
            "latitude",
            "location",
            "longitude",
            "members",
            "name",
            "related_projects",
            "tags",
            "website",
            "wikipedia_page",
        )
    ]
    + [("set", c) for c in ("split", "subset")]
    + [
        ("track", c)
        for c in (
            "bit_rate",
            "comments",
            "composer",
            "date_created",
            "date_recorded",
            "duration",
            "favorites",
            "genre_top",
            "genres",
            "genres_all",
            "information",
            "interest",
            "language_code",
            "license",
            "listens",
            "lyricist",
            "number",
            "publisher",
            "tags",
            "title",
        )
    ]
)
# Columns holding Python list literals (FMA's loader runs ast.literal_eval on them).
LIST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("track", "tags"),
    ("album", "tags"),
    ("artist", "tags"),
    ("track", "genres"),
    ("track", "genres_all"),
)

# Sub-genres (genre_id, parent_id, title); parents are top-level genres or other sub-genres.
SUB_GENRES: tuple[tuple[int, int, str], ...] = (
    (25, 12, "Punk"),
    (26, 12, "Post-Rock"),
    (27, 12, "Lo-Fi"),
    (45, 12, "Loud-Rock"),
    (31, 45, "Metal"),
    (66, 12, "Indie-Rock"),
    (181, 15, "Techno"),
    (182, 15, "House"),
    (236, 15, "IDM"),
    (42, 15, "Ambient Electronic"),
    (468, 15, "Dubstep"),
    (539, 21, "Rap"),
    (580, 21, "Abstract Hip-Hop"),
    (76, 10, "Experimental Pop"),
    (362, 10, "Synth-Pop"),
    (1, 38, "Avant-Garde"),
    (32, 38, "Noise"),
    (250, 38, "Drone"),
    (103, 17, "Freak-Folk"),
    (49, 17, "Singer-Songwriter"),
    (37, 4, "Jazz: Vocal"),
    (97, 4, "Jazz: Out"),
    (187, 5, "Composed Music"),
    (322, 5, "Chamber Music"),
    (77, 2, "French"),
    (79, 2, "Reggae - Dub"),
    (92, 2, "African"),
    (63, 9, "Bluegrass"),
    (651, 9, "Rockabilly"),
    (107, 13, "Lounge"),
    (11, 14, "Disco"),
    (7, 20, "Comedy"),
    (138, 20, "Audio Collage"),
    (18, 1235, "Soundtrack"),
    (167, 31, "Black-Metal"),
)
GENRE_PARENT: dict[int, int] = {**{g: 0 for g in TOP_GENRES}, **{g: p for g, p, _ in SUB_GENRES}}
GENRE_TITLE: dict[int, str] = {**TOP_GENRES, **{g: t for g, _, t in SUB_GENRES}}
TOP_ID: dict[str, int] = {title: gid for gid, title in TOP_GENRES.items()}


def genre_root(genre_id: int) -> int:
    """The top-level genre a genre belongs to."""
    while GENRE_PARENT[genre_id] != 0:
        genre_id = GENRE_PARENT[genre_id]
    return genre_id


def genre_ancestors(genre_id: int) -> list[int]:
    """The genre and all its ancestors up to its top-level genre."""
    out = [genre_id]
    while GENRE_PARENT[out[-1]] != 0:
        out.append(GENRE_PARENT[out[-1]])
    return out


def genres_under(top_id: int) -> list[int]:
    """Every genre id whose root is ``top_id`` (the top genre itself included), sorted."""
    return sorted(g for g in GENRE_PARENT if genre_root(g) == top_id)


def genres_frame(genres_all: list[list[int]]) -> pd.DataFrame:
    """genres.csv as FMA has it: index ``genre_id``; columns ``#tracks, parent, title, top_level``.

    ``#tracks`` counts the tracks whose ``genres_all`` holds the genre (multi-label membership).
    """
    counts = {g: 0 for g in GENRE_PARENT}
    for lst in genres_all:
        for g in lst:
            counts[g] += 1
    ids = sorted(GENRE_PARENT)
    frame = pd.DataFrame(
        {
            "#tracks": [counts[g] for g in ids],
            "parent": [GENRE_PARENT[g] for g in ids],
            "title": [GENRE_TITLE[g] for g in ids],
            "top_level": [genre_root(g) for g in ids],
        },
        index=pd.Index(ids, name="genre_id"),
    )
    return frame


# Bits of free text, with commas, quotes, newlines and non-ASCII as FMA's have.
_WORDS = (
    "night",
    "river",
    "Café",
    "señor",
    "Björk-ish",
    "über",
    "東京",
    "ночь",
    "déjà vu",
    "naïve",
    "sound",
    "echo",
    "garden",
    "machine",
    "blue",
    "ghost",
    "Zürich",
    "mañana",
    "light",
    "dust",
)
_LICENSES = (
    "Attribution-NonCommercial-ShareAlike 3.0 International",
    "Attribution-Noncommercial-No Derivative Works 3.0 United States",
    "Creative Commons Attribution 4.0 International",
    "Public Domain Mark 1.0",
)
_LOCATIONS = ("Brooklyn, NY", "Berlin, Germany", "São Paulo, Brasil", "Montréal, QC", "Tokyo", "Reykjavík")
_TAGS = ("awol", "lo-fi", "field recording", "live", "instrumental", "vinyl", "wfmu", "netlabel")


def _phrase(rng: np.random.Generator, k: int) -> str:
    return " ".join(str(w) for w in rng.choice(_WORDS, k))


def _text(rng: np.random.Generator) -> str:
    """HTML-ish free text with commas, quotes (both kinds), a newline and non-ASCII words."""
    a, b = _phrase(rng, 3), _phrase(rng, 2)
    return f'<p>{a.capitalize()}, "{b}" and it\'s {_phrase(rng, 1)}.</p>\n<p>— {_phrase(rng, 2)}</p>'


def _date(rng: np.random.Generator, year_lo: int = 2008, year_hi: int = 2017) -> str:
    ts = pd.Timestamp(f"{year_lo}-01-01") + pd.Timedelta(
        seconds=int(rng.integers(0, (year_hi - year_lo) * 365 * 86400))
    )
    return ts.strftime("%Y-%m-%d %H:%M:%S")


def _ascii_word(rng: np.random.Generator) -> str:
    return str(rng.choice(_WORDS)).encode("ascii", "ignore").decode().replace(" ", "") or "band"


def _maybe(rng: np.random.Generator, p: float, value):
    return value if rng.random() < p else np.nan


def _tags(rng: np.random.Generator) -> list[str]:
    return [str(t) for t in rng.choice(_TAGS, int(rng.integers(0, 3)), replace=False)]


def track_row(
    rng: np.random.Generator,
    *,
    track_id: int,
    artist_id: int,
    album_id: int,
    title: str,
    artist: str,
    album: str,
    split: str,
    subset: str,
    genre_top: str | None,
    genres: list[int],
    genres_all: list[int],
    bit_rate: int,
    duration: int,
    number: int,
) -> dict[tuple[str, str], object]:
    """One row of tracks.csv, keyed by (level-0, level-1) column; lists as Python literals.

    The given fields are used as is; the rest (counts, dates, text) come from ``rng``.
    """
    row: dict[tuple[str, str], object] = {
        ("album", "comments"): int(rng.integers(0, 5)),
        ("album", "date_created"): _date(rng),
        ("album", "date_released"): _maybe(rng, 0.6, _date(rng, 1990, 2017)),
        ("album", "engineer"): _maybe(rng, 0.1, _phrase(rng, 2).title()),
        ("album", "favorites"): int(rng.integers(0, 20)),
        ("album", "id"): album_id,
        ("album", "information"): _maybe(rng, 0.7, _text(rng)),
        ("album", "listens"): int(rng.integers(0, 100000)),
        ("album", "producer"): _maybe(rng, 0.1, _phrase(rng, 2).title()),
        ("album", "tags"): repr(_tags(rng)),
        ("album", "title"): album,
        ("album", "tracks"): int(rng.integers(1, 20)),
        ("album", "type"): _maybe(
            rng, 0.95, str(rng.choice(["Album", "Single Tracks", "Live Performance", "Radio Program"]))
        ),
        ("artist", "active_year_begin"): _maybe(rng, 0.2, f"{int(rng.integers(1960, 2015))}-01-01 00:00:00"),
        ("artist", "active_year_end"): _maybe(rng, 0.05, f"{int(rng.integers(2000, 2017))}-01-01 00:00:00"),
        ("artist", "associated_labels"): _maybe(rng, 0.15, _phrase(rng, 2).title()),
        ("artist", "bio"): _maybe(rng, 0.7, _text(rng)),
        ("artist", "comments"): int(rng.integers(0, 10)),
        ("artist", "date_created"): _date(rng),
        ("artist", "favorites"): int(rng.integers(0, 100)),
        ("artist", "id"): artist_id,
        ("artist", "latitude"): _maybe(rng, 0.4, round(float(rng.uniform(-60, 70)), 6)),
        ("artist", "location"): _maybe(rng, 0.4, str(rng.choice(_LOCATIONS))),
        ("artist", "longitude"): _maybe(rng, 0.4, round(float(rng.uniform(-180, 180)), 6)),
        ("artist", "members"): _maybe(rng, 0.3, _phrase(rng, 2).title() + "\n" + _phrase(rng, 2).title()),
        ("artist", "name"): artist,
        ("artist", "related_projects"): _maybe(rng, 0.1, _phrase(rng, 3).title()),
        ("artist", "tags"): repr(_tags(rng)),
        ("artist", "website"): _maybe(rng, 0.5, f"http://www.{_ascii_word(rng)}.com"),
        ("artist", "wikipedia_page"): _maybe(rng, 0.02, "http://en.wikipedia.org/wiki/Example"),
        ("set", "split"): split,
        ("set", "subset"): subset,
        ("track", "bit_rate"): bit_rate,
        ("track", "comments"): int(rng.integers(0, 3)),
        ("track", "composer"): _maybe(rng, 0.05, _phrase(rng, 2).title()),
        ("track", "date_created"): _date(rng),
        ("track", "date_recorded"): _maybe(rng, 0.05, _date(rng, 1950, 2015)),
        ("track", "duration"): duration,
        ("track", "favorites"): int(rng.integers(0, 10)),
        ("track", "genre_top"): genre_top if genre_top is not None else np.nan,
        ("track", "genres"): repr(list(genres)),
        ("track", "genres_all"): repr(list(genres_all)),
        ("track", "information"): _maybe(rng, 0.05, _text(rng)),
        ("track", "interest"): int(rng.integers(0, 50000)),
        ("track", "language_code"): _maybe(rng, 0.15, str(rng.choice(["en", "fr", "es", "de", "pt"]))),
        ("track", "license"): str(rng.choice(_LICENSES)),
        ("track", "listens"): int(rng.integers(0, 50000)),
        ("track", "lyricist"): _maybe(rng, 0.03, _phrase(rng, 2).title()),
        ("track", "number"): number,
        ("track", "publisher"): _maybe(rng, 0.02, _phrase(rng, 2).title()),
        ("track", "tags"): repr(_tags(rng)),
        ("track", "title"): title,
    }
    return row


def tracks_frame(rows: dict[int, dict[tuple[str, str], object]]) -> pd.DataFrame:
    """The tracks.csv frame: index ``track_id`` (sorted), two-level columns in FMA's order.

    Integer columns that FMA fills with -1 when missing hold -1 here too.
    """
    ids = sorted(rows)
    columns = pd.MultiIndex.from_tuples(TRACKS_COLUMNS)
    data = {col: [rows[i][col] for i in ids] for col in TRACKS_COLUMNS}
    frame = pd.DataFrame(data, index=pd.Index(ids, name="track_id"), columns=columns)
    return frame
