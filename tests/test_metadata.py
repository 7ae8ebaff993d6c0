"""tracks.csv: FMA's format, the reference's selection, clear errors for bad files."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from preprocess.fma import CLASS_NAMES, KNOWN_BAD
from preprocess.metadata import MetadataError, load_selection, load_tracks, select_tracks, tracks_csv_path


@pytest.fixture(scope="module")
def frame(mini_fma):
    return load_tracks(tracks_csv_path(mini_fma[0]))


def fma_frame(rows: dict) -> pd.DataFrame:
    """A small frame shaped like FMA's (two-level columns, index 'track_id')."""
    columns = pd.MultiIndex.from_tuples(
        [
            ("set", "split"),
            ("set", "subset"),
            ("track", "duration"),
            ("track", "genre_top"),
            ("track", "title"),
        ]
    )
    data = [[split, subset, dur, genre, 'a, "b"\nc'] for split, subset, dur, genre in rows.values()]
    out = pd.DataFrame(data, index=pd.Index(list(rows), name="track_id"), columns=columns)
    return out


def test_selection_follows_the_truth(mini_fma, frame):
    fma_dir, truth = mini_fma
    selection = load_selection(fma_dir, "large")
    duration = frame[("track", "duration")]
    expected = {"train": [], "validation": [], "test": []}
    split_name = {"training": "train", "validation": "validation", "test": "test"}
    for key, t in truth["tracks"].items():
        tid = int(key)
        if t["genre_top"] is not None and tid not in KNOWN_BAD and duration[tid] > 29:
            expected[split_name[t["split"]]].append((tid, CLASS_NAMES.index(t["genre_top"])))
    assert selection.tracks == {k: sorted(v) for k, v in expected.items()}
    no_genre = sorted(int(k) for k, t in truth["tracks"].items() if t["genre_top"] is None)
    assert selection.skipped["no genre_top"] == no_genre
    assert sum(map(len, selection.skipped.values())) + selection.num_tracks() == len(truth["tracks"])


def test_subsets_are_nested(mini_fma, frame):
    truth = mini_fma[1]["tracks"]
    ids = {}
    for subset in ("small", "medium", "large"):
        sel = select_tracks(frame, subset, min_duration=None, skip_known_bad=False)
        ids[subset] = {t for v in sel.tracks.values() for t, _ in v}
    assert ids["small"] < ids["medium"] < ids["large"]
    assert ids["medium"] == {
        int(k) for k, t in truth.items() if t["subset"] in ("small", "medium") and t["genre_top"] is not None
    }


def test_known_bad_and_duration_skips_are_options():
    frame = fma_frame(
        {
            2624: ("training", "small", 30.0, "Rock"),  # known bad (unreadable)
            10: ("training", "small", 12.0, "Jazz"),  # listed too short
            11: ("test", "medium", 300.0, "Pop"),
            12: ("validation", "large", 300.0, "Polka"),
        }
    )  # not a top genre
    default = select_tracks(frame, "large")
    assert default.tracks == {"train": [], "validation": [], "test": [(11, CLASS_NAMES.index("Pop"))]}
    assert default.skipped[KNOWN_BAD[2624]] == [2624]
    assert default.skipped["duration <= 29 s in tracks.csv"] == [10]
    assert default.skipped["genre_top 'Polka' is not one of the 16 top-level genres"] == [12]
    everything = select_tracks(frame, "large", skip_known_bad=False, min_duration=10)
    assert [t for t, _ in everything.tracks["train"]] == [10, 2624]
    assert select_tracks(frame, "small").num_tracks() == 0


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_round_trip_of_a_pandas_written_file(tmp_path):
    path = tmp_path / "tracks.csv"
    fma_frame({5: ("training", "small", 31.5, "Folk")}).to_csv(path)
    assert path.read_text().splitlines()[2].startswith("track_id")
    assert select_tracks(load_tracks(path), "small").tracks["train"] == [(5, CLASS_NAMES.index("Folk"))]


def test_bad_files_get_clear_errors(tmp_path, mini_fma):
    with pytest.raises(MetadataError, match="tracks.csv not found.*make download.*make demo"):
        load_tracks(tmp_path / "nope" / "tracks.csv")
    empty = _write(tmp_path / "empty.csv", "")
    with pytest.raises(MetadataError, match=r"empty\.csv: empty file"):
        load_tracks(empty)
    one_header = _write(tmp_path / "one.csv", "track_id,genre_top,split\n1,Rock,training\n2,Pop,test\n")
    with pytest.raises(MetadataError, match=r"one\.csv: .*header"):
        load_tracks(one_header)
    missing = tmp_path / "missing.csv"
    original = load_tracks(tracks_csv_path(mini_fma[0]))
    original.drop(columns=[("track", "genre_top")]).to_csv(missing)
    with pytest.raises(MetadataError, match=r"missing\.csv: column \('track', 'genre_top'\) is missing"):
        load_tracks(missing)


def test_a_copy_of_the_generated_csv_loads_like_fma_recipe(tmp_path, mini_fma):
    path = shutil.copy(tracks_csv_path(mini_fma[0]), tmp_path / "tracks.csv")
    ours = load_tracks(path)
    theirs = pd.read_csv(path, index_col=0, header=[0, 1])
    assert ours.shape == theirs.shape == (len(mini_fma[1]["tracks"]), 52)
