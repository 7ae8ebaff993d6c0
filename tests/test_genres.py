"""FMA's genre taxonomy and the genres_all target: genres.csv checked, multi-hot rows, the selection,
and the features stage storing them (on the generated mini-FMA, real MP3s and HDF5)."""

from __future__ import annotations

import ast
import json

import numpy as np
import pandas as pd
import pytest

from preprocess import driver
from preprocess.fma import CLASS_NAMES, KNOWN_BAD, TOP_GENRES
from preprocess.genres import GenresError, GenreTable, genres_csv_path, load_genres
from preprocess.metadata import MetadataError, load_tracks, select_tracks, tracks_csv_path
from preprocess.options import FeatureOptions
from preprocess.plan import build_plan
from preprocess.verify import verify_shards
from shards import NO_LABEL, read_extra, read_manifest, read_shard

SPLIT = {"training": "train", "validation": "validation", "test": "test"}


def _genres_csv(path, rows):
    """Write a genres.csv shaped like FMA's from (id, parent, title, top_level) rows."""
    frame = pd.DataFrame(
        {
            "#tracks": [0] * len(rows),
            "parent": [r[1] for r in rows],
            "title": [r[2] for r in rows],
            "top_level": [r[3] for r in rows],
        },
        index=pd.Index([r[0] for r in rows], name="genre_id"),
    )
    frame.to_csv(path)
    return path


TREE = [
    (12, 0, "Rock", 12),
    (25, 12, "Punk", 12),
    (45, 12, "Loud-Rock", 12),
    (31, 45, "Metal", 12),
    (15, 0, "Electronic", 15),
]


def test_a_genre_table_from_genres_csv(tmp_path):
    table = load_genres(_genres_csv(tmp_path / "genres.csv", TREE))
    assert table.ids == (12, 15, 25, 31, 45)  # column order: ascending id
    assert table.titles == ("Rock", "Electronic", "Punk", "Metal", "Loud-Rock")
    assert table.closure([31]) == (12, 31, 45) and table.closure([]) == ()
    assert GenreTable.from_rows(table.rows()) == table
    hot = table.multi_hot([[12, 31, 45], [], [15]])
    assert hot.dtype == np.uint8 and hot.tolist() == [[1, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]]
    with pytest.raises(KeyError):
        table.closure([99])


@pytest.mark.parametrize(
    "rows, message",
    [
        (TREE + [(50, 77, "Orphan", 12)], "genre 50 has parent 77"),  # a parent it does not list
        ([(12, 0, "Rock", 12), (25, 31, "Punk", 12), (31, 25, "Metal", 12)], r"cycle: 25 -> 31 -> 25"),
        ([(12, 0, "Rock", 12), (25, 25, "Punk", 12)], r"cycle: 25 -> 25"),
        (TREE[:2] + [(45, 12, "Loud-Rock", 15)], "genre 45: top_level 15, its parents lead to 12"),
        (TREE + [(66, 12, "Punk", 12)], "titles must be unique"),
    ],
)
def test_a_genres_csv_that_is_not_a_tree_is_refused(tmp_path, rows, message):
    path = _genres_csv(tmp_path / "genres.csv", rows)
    with pytest.raises(GenresError, match=message) as info:
        load_genres(path)
    assert str(path) in str(info.value) and "make download" in str(info.value)


def test_a_missing_or_malformed_genres_csv_is_a_clear_error(tmp_path):
    with pytest.raises(GenresError, match=r"genres\.csv not found"):
        load_genres(tmp_path / "genres.csv")
    (tmp_path / "bad.csv").write_text("genre_id,parent,title\n1,0,A\n")
    with pytest.raises(GenresError, match="column 'top_level' is missing"):
        load_genres(tmp_path / "bad.csv")
    (tmp_path / "text.csv").write_text("genre_id,parent,title,top_level\n1,zero,A,1\n")
    with pytest.raises(GenresError, match="must be integers"):
        load_genres(tmp_path / "text.csv")


def _frame(rows: dict) -> pd.DataFrame:
    """A small tracks.csv frame: track id -> (split, subset, duration, genre_top, genres_all cell)."""
    columns = pd.MultiIndex.from_tuples(
        [
            ("set", "split"),
            ("set", "subset"),
            ("track", "duration"),
            ("track", "genre_top"),
            ("track", "genres_all"),
        ]
    )
    return pd.DataFrame(list(rows.values()), index=pd.Index(list(rows), name="track_id"), columns=columns)


def test_genres_all_selects_every_track_with_a_genre(tmp_path):
    table = load_genres(_genres_csv(tmp_path / "genres.csv", TREE))
    frame = _frame(
        {
            3: ("training", "large", 300, "Rock", "[12, 31]"),  # an ancestor left out: added
            4: ("training", "large", 300, np.nan, "[12, 25, 15]"),  # two top genres: no label
            5: ("test", "large", 300, np.nan, "[]"),  # no genre at all
            6: ("validation", "large", 12, "Electronic", "[15]"),  # listed too short
            2624: ("training", "large", 300, "Rock", "[12]"),  # known bad
            7: ("test", "medium", 300, "Electronic", "[15]"),
        }
    )
    sel = select_tracks(frame, "large", target="genres_all", genre_table=table)
    rock, electronic = CLASS_NAMES.index("Rock"), CLASS_NAMES.index("Electronic")
    assert sel.tracks == {"train": [(3, rock), (4, NO_LABEL)], "validation": [], "test": [(7, electronic)]}
    assert sel.genres == {3: (12, 31, 45), 4: (12, 15, 25), 7: (15,)}
    assert sel.skipped == {
        "duration <= 29 s in tracks.csv": [6],
        KNOWN_BAD[2624]: [2624],
        "no genres": [5],
    }
    assert sel.genre_summary() == {"selected": 3, "no_top_genre": 1, "genres": 5, "genres_in_train": 5}
    # the default target ignores genres_all: what it always selected
    default = select_tracks(frame, "large")
    assert default.genres is None and default.genre_summary() is None
    assert default.tracks["train"] == [(3, rock)] and default.skipped["no genre_top"] == [4, 5]


@pytest.mark.parametrize(
    "cell, problem",
    [
        ("[12, 'x']", r"track 9: \"\[12, 'x'\]\" is not a list of genre ids"),
        ("12, 25", "track 9: '12, 25' is not a list"),
        ("[12, 25", r"track 9: '\[12, 25' is not a list"),
        (np.nan, "track 9: nan is not a list"),
        ("[12, 999]", "track 9: genre id 999 is not in genres.csv"),
    ],
)
def test_an_unusable_genres_all_cell_is_an_error_naming_the_track(tmp_path, cell, problem):
    table = load_genres(_genres_csv(tmp_path / "genres.csv", TREE))
    frame = _frame(
        {8: ("training", "large", 300, "Rock", "[12]"), 9: ("training", "large", 300, "Rock", cell)}
    )
    with pytest.raises(MetadataError, match=problem) as info:
        select_tracks(frame, "large", target="genres_all", genre_table=table, source="tracks.csv")
    assert "tracks.csv: 1 track has" in str(info.value) and "same fma_metadata.zip" in str(info.value)
    assert select_tracks(frame, "large").num_tracks() == 2  # the default target never reads the column


def test_genres_all_needs_its_column(tmp_path):
    table = load_genres(_genres_csv(tmp_path / "genres.csv", TREE))
    frame = _frame({8: ("training", "large", 300, "Rock", "[12]")}).drop(columns=[("track", "genres_all")])
    with pytest.raises(MetadataError, match=r"column \('track', 'genres_all'\) is missing"):
        select_tracks(frame, "large", target="genres_all", genre_table=table)


# --------------------------------------------------------------------------- the features stage


@pytest.fixture(scope="module")
def genres_run(mini_fma, tmp_path_factory):
    out = tmp_path_factory.mktemp("genres-shards")
    options = FeatureOptions(mini_fma[0], out, jobs=2, shard_size=16, progress=False, target="genres_all")
    return out, driver.run_features(options), options


def test_genres_all_shards_hold_every_tracks_genres(genres_run, mini_fma):
    out, summary, _ = genres_run
    fma_dir, truth = mini_fma
    tracks = load_tracks(tracks_csv_path(fma_dir))
    table = load_genres(genres_csv_path(fma_dir))
    manifest = read_manifest(out)
    assert manifest["extras"]["genres"]["genre_table"] == table.rows()
    assert manifest["selection"]["target"] == "genres_all" and manifest["format_version"] == 2
    written = {}
    for entry in manifest["shards"]:
        shard = read_shard(out / entry["name"], verify=True)
        assert shard.extras["genres"]["genre_table"] == table.rows()
        hot = read_extra(out / entry["name"], "genres")
        assert hot.shape == (shard.num_tracks, len(table))
        for tid, label, row in zip(shard.track_id.tolist(), shard.label.tolist(), hot, strict=True):
            written[tid] = (shard.split, label, tuple(np.asarray(table.ids)[row == 1].tolist()))
    expected = {}
    for key, t in truth["tracks"].items():
        tid = int(key)
        genres_all = ast.literal_eval(tracks.loc[tid, ("track", "genres_all")])
        if (
            t["kind"] == "good"
            and genres_all
            and tid not in KNOWN_BAD
            and tracks.loc[tid, ("track", "duration")] > 29
        ):
            label = NO_LABEL if t["genre_top"] is None else CLASS_NAMES.index(t["genre_top"])
            expected[tid] = (SPLIT[t["split"]], label, tuple(sorted(genres_all)))
    assert written == expected
    no_top = [v for v in written.values() if v[1] == NO_LABEL]
    assert no_top and all(len({table.top_levels[table.ids.index(g)] for g in v[2]}) > 1 for v in no_top)
    # every written track's top-level genre is among its genres
    top_id = {name: gid for gid, name in TOP_GENRES.items()}
    assert all(top_id[CLASS_NAMES[label]] in genres for _, label, genres in written.values() if label >= 0)
    totals = manifest["totals"]
    assert sum(t["tracks"] for t in totals.values()) == len(written)
    assert totals["train"]["no_top_genre"] == sum(
        v[0] == "train" and v[1] == NO_LABEL for v in written.values()
    )
    rock = sum(v[0] == "train" and 12 in v[2] for v in written.values())
    assert totals["train"]["per_genre"]["Rock"] == rock > 0
    assert verify_shards(out) == []  # make verify accepts the -1 labels and the genre rows
    g = summary["genres"]
    in_train = {x for v in expected.values() for x in v[2] if v[0] == "train"}
    assert g["genres"] == len(table) and g["genres_in_train"] >= len(in_train) and g["no_top_genre"] > 0
    text = driver.format_summary(summary, out)
    assert (
        f"genres_all: {g['selected']} tracks selected ({g['no_top_genre']} without a top-level genre)" in text
    )
    assert (
        f"{g['genres_in_train']} of the {len(table)} genres of genres.csv have at least one training track"
        in text
    )


def test_the_plan_records_the_target_only_when_it_is_not_the_default(genres_run, mini_fma, tmp_path):
    out, _, options = genres_run
    plan = json.loads((out / "plan.json").read_text())
    assert plan["selection"]["target"] == "genres_all" and len(plan["genre_table"]) > 16
    assert all(len(s["genres"]) == len(s["track_ids"]) for s in plan["shards"])
    default = build_plan(options.replace(target="genre_top")).data
    assert set(default) == {
        "plan_version",
        "subset",
        "recipe",
        "class_names",
        "shard_size",
        "selection",
        "shards",
        "skipped",
    }
    assert set(default["selection"]) == {"skip_known_bad", "min_duration", "keep_silence"}
    assert all(
        set(s) == {"name", "split", "shard_index", "num_shards", "track_ids", "labels"}
        for s in default["shards"]
    )
    # the other target into the same folder is refused, naming what changed
    with pytest.raises(Exception, match="selection.*genres_all") as info:
        driver.run_features(options.replace(target="genre_top"))
    assert "--force" in str(info.value)
    # a genres_all rerun does nothing
    again = driver.run_features(options)
    assert again["computed"] == [] and len(again["already_complete"]) == len(plan["shards"])
