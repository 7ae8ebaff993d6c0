"""Result writers: CSV and JSON Lines rows, the embeddings HDF5 file, atomic writes."""

import csv
import json

import h5py
import numpy as np
import pytest

from shards.errors import FmaGenreError
from train.outputs import TrackPrediction, format_line, write_embeddings, write_results

NAMES = ["Rock", "Pop", "Jazz", "Folk"]


def _results():
    ok = TrackPrediction(
        path="a/song one.mp3",
        probabilities=np.array([0.1, 0.6, 0.05, 0.25], np.float32),
        window_starts_s=np.array([0.0, 14.75]),
        window_probabilities=np.array([[0.1, 0.7, 0.1, 0.1], [0.1, 0.5, 0.0, 0.4]], np.float32),
    )
    bad = TrackPrediction(path="b,broken.mp3", error="cannot decode: bad header, really")
    return [ok, bad]


def test_csv_rows_hold_top_genres_all_probabilities_windows_and_errors(tmp_path):
    out = write_results(tmp_path / "r.csv", _results(), NAMES, k=2)
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == ["a/song one.mp3", "b,broken.mp3"]
    assert rows[0]["windows"] == "2" and rows[0]["genre_1"] == "Pop" and rows[0]["genre_2"] == "Folk"
    assert float(rows[0]["probability_1"]) == pytest.approx(0.6)
    assert float(rows[0]["p_Jazz"]) == pytest.approx(0.05) and rows[0]["error"] == ""
    assert rows[1]["windows"] == "0" and rows[1]["genre_1"] == "" and rows[1]["p_Rock"] == ""
    assert rows[1]["error"] == "cannot decode: bad header, really"


def test_csv_per_window_rows_follow_their_file(tmp_path):
    rows = list(csv.DictReader(write_results(tmp_path / "r.csv", _results(), NAMES, per_window=True).open()))
    assert [(r["path"], r["window_start_s"]) for r in rows] == [
        ("a/song one.mp3", ""),
        ("a/song one.mp3", "0.000"),
        ("a/song one.mp3", "14.750"),
        ("b,broken.mp3", ""),
    ]
    assert rows[2]["genre_1"] == "Pop" and float(rows[2]["p_Folk"]) == pytest.approx(0.4)


def test_jsonl_records(tmp_path):
    out = write_results(tmp_path / "r.jsonl", _results(), NAMES, k=3, per_window=True)
    lines = out.read_text().splitlines()
    ok, bad = map(json.loads, lines)
    assert [t["genre"] for t in ok["top"]] == ["Pop", "Folk", "Rock"] and ok["windows"] == 2
    assert ok["probabilities"]["Jazz"] == pytest.approx(0.05) and ok["error"] is None
    assert [w["start_s"] for w in ok["per_window"]] == [0.0, 14.75]
    assert bad == {
        "path": "b,broken.mp3",
        "windows": 0,
        "top": [],
        "probabilities": None,
        "error": "cannot decode: bad header, really",
    }
    assert format_line(_results()[0], NAMES, 1) == "a/song one.mp3: Pop 0.600 (2 windows)"
    assert format_line(_results()[0], NAMES, 2, per_window=True).splitlines()[1:] == [
        "  at 0.00 s: Pop 0.700, Rock 0.100",
        "  at 14.75 s: Pop 0.500, Folk 0.400",
    ]
    assert format_line(_results()[1], NAMES, 2) == "b,broken.mp3: error: cannot decode: bad header, really"


def test_bad_output_paths_are_user_errors_and_nothing_is_left_behind(tmp_path):
    with pytest.raises(FmaGenreError, match="use a .csv or .jsonl"):
        write_results(tmp_path / "r.txt", _results(), NAMES)
    with pytest.raises(FmaGenreError, match="does not exist"):
        write_results(tmp_path / "nope" / "r.csv", _results(), NAMES)
    (tmp_path / "r.csv").write_text("old")
    with pytest.raises(ValueError, match="3 probabilities for 4 classes"):  # the old file stays
        write_results(tmp_path / "r.csv", [TrackPrediction(path="x", probabilities=np.ones(3))], NAMES)
    assert (tmp_path / "r.csv").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_embeddings_file_for_files_and_for_shards(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((3, 5)).astype(np.float32)
    write_embeddings(
        tmp_path / "f.h5",
        emb,
        attrs={"class_names": NAMES, "model": "m"},
        paths=["x.mp3", "y.mp3", "z.mp3"],
        windows=np.array([1, 4, 2]),
        failed=[("w.mp3", "empty file")],
    )
    with h5py.File(tmp_path / "f.h5") as h5:
        np.testing.assert_array_equal(h5["embedding"][:], emb)
        assert [p.decode() for p in h5["path"][:]] == ["x.mp3", "y.mp3", "z.mp3"]
        assert h5["windows"][:].tolist() == [1, 4, 2]
        assert [p.decode() for p in h5["failed_reason"][:]] == ["empty file"]
        assert json.loads(h5.attrs["class_names"]) == NAMES and h5.attrs["embedding_dim"] == 5
    write_embeddings(
        tmp_path / "s.h5", emb, attrs={}, track_id=np.array([2, 5, 9]), label=np.array([0, 3, 1])
    )
    with h5py.File(tmp_path / "s.h5") as h5:
        assert h5["track_id"][:].tolist() == [2, 5, 9] and h5["label"].dtype == np.int64
        assert "path" not in h5
