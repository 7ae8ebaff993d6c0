"""The generated mini-FMA (preprocess.synth): FMA's file shapes, real MP3s, declared bad files."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pytest

from preprocess import fma
from preprocess.synth.generator import BAD_KINDS, SMALL_GENRES, generate, plan
from preprocess.synth.meta import LIST_COLUMNS, TRACKS_COLUMNS, genre_root

# FMA's tracks.csv columns in file order, written out here (not imported) so that a change in
# the generator's list is caught.
FMA_COLUMNS = (
    [
        ("album", c)
        for c in "comments date_created date_released engineer favorites id information listens "
        "producer tags title tracks type".split()
    ]
    + [
        ("artist", c)
        for c in "active_year_begin active_year_end associated_labels bio comments date_created "
        "favorites id latitude location longitude members name related_projects tags website "
        "wikipedia_page".split()
    ]
    + [("set", "split"), ("set", "subset")]
    + [
        ("track", c)
        for c in "bit_rate comments composer date_created date_recorded duration favorites "
        "genre_top genres genres_all information interest language_code license listens lyricist number "
        "publisher tags title".split()
    ]
)
PANDAS2_DIR = Path.home() / ".cache" / "fma-genre-test" / "pandas2"


def load_tracks(path: Path) -> pd.DataFrame:
    """FMA's own loader recipe (utils.load, reduced to what matters here)."""
    tracks = pd.read_csv(path, index_col=0, header=[0, 1])
    for col in LIST_COLUMNS:
        tracks[col] = tracks[col].map(ast.literal_eval)
    return tracks


class Decoded(NamedTuple):
    samples: np.ndarray  # (n, channels) float32
    sample_rate: int
    nchannels: int
    duration: float


def decode(path: Path) -> Decoded:
    """Decode an MP3 whole at its own sample rate and channel count (libsndfile + mpg123)."""
    import soundfile

    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    return Decoded(samples, rate, samples.shape[1], samples.shape[0] / rate)


def by_kind(truth: dict, kind: str) -> dict[int, dict]:
    return {int(k): v for k, v in truth["tracks"].items() if v["kind"] == kind}


# --------------------------------------------------------------------------- tracks.csv / genres.csv


def test_tracks_csv_has_fma_header_shape_and_columns(mini_fma):
    fma_dir, truth = mini_fma
    path = fma_dir / "fma_metadata" / "tracks.csv"
    with open(path, encoding="utf-8", newline="") as fh:
        lines = [fh.readline().rstrip("\r\n") for _ in range(3)]
    assert lines[0].split(",") == [""] + [a for a, _ in FMA_COLUMNS]
    assert lines[1].split(",") == [""] + [b for _, b in FMA_COLUMNS]
    assert lines[2].split(",") == ["track_id"] + [""] * 52
    assert list(TRACKS_COLUMNS) == FMA_COLUMNS

    tracks = load_tracks(path)
    assert tracks.index.name == "track_id"
    assert list(tracks.columns) == FMA_COLUMNS
    assert sorted(tracks.index) == sorted(int(k) for k in truth["tracks"]) == list(tracks.index)
    assert len(tracks) == truth["n_tracks"] == 120
    for col in LIST_COLUMNS:
        assert all(isinstance(v, list) for v in tracks[col]), col
    assert all(isinstance(g, int) for lst in tracks[("track", "genres_all")] for g in lst)
    assert any(isinstance(t, str) and t for lst in tracks[("track", "tags")] for t in lst) or any(
        lst for lst in tracks[("artist", "tags")]
    )
    # FMA's quirks: -1 for missing ints, dates as text, free text with commas, quotes, newlines, non-ASCII.
    assert (tracks[("album", "id")] == -1).any()
    assert tracks[("track", "date_created")].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    text = "".join(tracks[("artist", "bio")].dropna()) + "".join(tracks[("album", "information")].dropna())
    for needle in (",", '"', "'", "\n", "é"):
        assert needle in text, needle
    assert pd.api.types.is_integer_dtype(tracks[("track", "duration")])
    assert pd.api.types.is_integer_dtype(tracks[("track", "bit_rate")])


def test_tracks_csv_agrees_with_truth(mini_fma):
    fma_dir, truth = mini_fma
    tracks = load_tracks(fma_dir / "fma_metadata" / "tracks.csv")
    for tid, t in truth["tracks"].items():
        row = tracks.loc[int(tid)]
        top = row[("track", "genre_top")]
        assert (t["genre_top"] is None and pd.isna(top)) or top == t["genre_top"], tid
        assert row[("set", "split")] == t["split"]
        assert row[("set", "subset")] == t["subset"]
        roots = {genre_root(g) for g in row[("track", "genres")]}
        all_roots = {genre_root(g) for g in row[("track", "genres_all")]}
        assert roots == all_roots and set(row[("track", "genres")]) <= set(row[("track", "genres_all")])
        if t["genre_top"] is not None:  # like FMA: genre_top iff the genres have exactly one root
            assert roots == {next(k for k, v in fma.TOP_GENRES.items() if v == t["genre_top"])}
        else:
            assert len(roots) != 1
        if t["kind"] == "good" and not t["vbr"]:
            assert row[("track", "bit_rate")] == t["bitrate_kbps"] * 1000
        assert t["path"] == f"fma_large/{fma.audio_relpath(int(tid))}"


def test_genres_csv(mini_fma):
    fma_dir, truth = mini_fma
    path = fma_dir / "fma_metadata" / "genres.csv"
    assert path.read_text(encoding="utf-8").splitlines()[0] == "genre_id,#tracks,parent,title,top_level"
    genres = pd.read_csv(path, index_col=0)
    top = genres[genres["parent"] == 0]
    assert dict(zip(top.index, top["title"], strict=True)) == fma.TOP_GENRES
    assert (top["top_level"] == top.index).all()
    sub = genres[genres["parent"] != 0]
    assert len(sub) >= 16
    assert set(sub["parent"]) <= set(genres.index)
    for gid, row in sub.iterrows():  # top_level is the root, following parents
        node = gid
        while genres.loc[node, "parent"] != 0:
            node = genres.loc[node, "parent"]
        assert row["top_level"] == node
    assert (sub["top_level"] != sub["parent"]).any()  # some depth-2 genre
    tracks = load_tracks(fma_dir / "fma_metadata" / "tracks.csv")
    counts = Counter(g for lst in tracks[("track", "genres_all")] for g in lst)
    assert {g: counts.get(g, 0) for g in genres.index} == genres["#tracks"].to_dict()


def _pandas2_dir() -> Path:
    """pandas 2.x installed once into a cache folder (atomic rename), for the subprocess check."""
    if (PANDAS2_DIR / "pandas").is_dir():
        return PANDAS2_DIR
    PANDAS2_DIR.parent.mkdir(parents=True, exist_ok=True)
    tmp = PANDAS2_DIR.with_name(f"pandas2.tmp-{os.getpid()}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(tmp),
            "pandas>=2.2,<3",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not (tmp / "pandas").is_dir():
        pytest.fail(
            f"could not install pandas 2.x into {tmp} for the pandas-2 loading check "
            f"(pip needs PyPI access):\n{proc.stderr[-2000:]}"
        )
    try:
        tmp.rename(PANDAS2_DIR)
    except OSError:  # another run got there first
        pass
    return PANDAS2_DIR


PANDAS2_SCRIPT = """
import ast, json, sys
import pandas as pd
path = sys.argv[1]
tracks = pd.read_csv(path, index_col=0, header=[0, 1])
for col in [('track', 'tags'), ('album', 'tags'), ('artist', 'tags'), ('track', 'genres'),
            ('track', 'genres_all')]:
    tracks[col] = tracks[col].map(ast.literal_eval)
print(json.dumps({"version": pd.__version__, "columns": [list(c) for c in tracks.columns],
                  "index_name": tracks.index.name, "ids": [int(i) for i in tracks.index],
                  "genres": {str(i): g for i, g in tracks[('track', 'genres')].items()},
                  "genre_top": {str(i): (None if pd.isna(g) else g)
                                for i, g in tracks[('track', 'genre_top')].items()},
                  "bio": [b for b in tracks[('artist', 'bio')] if isinstance(b, str)]}))
"""


@pytest.mark.slow
def test_tracks_csv_loads_under_pandas2(mini_fma, tmp_path):
    fma_dir, truth = mini_fma
    target = _pandas2_dir()
    script = tmp_path / "load.py"
    script.write_text(PANDAS2_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    proc = subprocess.run(
        [sys.executable, str(script), str(fma_dir / "fma_metadata" / "tracks.csv")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["version"].startswith("2.")
    assert [tuple(c) for c in got["columns"]] == FMA_COLUMNS
    assert got["index_name"] == "track_id"
    assert got["ids"] == sorted(int(k) for k in truth["tracks"])
    assert got["genre_top"] == {k: v["genre_top"] for k, v in truth["tracks"].items()}
    now = load_tracks(fma_dir / "fma_metadata" / "tracks.csv")  # pandas 3 in this process
    assert got["genres"] == {str(i): g for i, g in now[("track", "genres")].items()}
    assert got["bio"] == [b for b in now[("artist", "bio")] if isinstance(b, str)]


# --------------------------------------------------------------------------- dataset structure


def test_subsets_nested_splits_and_genres(mini_fma):
    _, truth = mini_fma
    tracks = truth["tracks"].values()
    for t in tracks:
        if t["subset"] in ("small", "medium"):  # fma_medium and fma_small hold only genre_top tracks
            assert t["genre_top"] is not None
        if t["subset"] == "small":
            assert t["genre_top"] in SMALL_GENRES
    subsets = Counter(t["subset"] for t in tracks)
    assert all(subsets[s] > 0 for s in fma.SUBSETS)
    splits = Counter(t["split"] for t in tracks)
    assert set(splits) == set(fma.SPLITS)
    assert splits["training"] > splits["validation"] + splits["test"]
    good_top = [t for t in tracks if t["kind"] == "good" and t["genre_top"]]
    assert {t["genre_top"] for t in good_top} == set(fma.CLASS_NAMES)
    assert len({t["genre_top"] for t in good_top if t["split"] == "test"}) >= 8
    assert any(t["genre_top"] is None for t in tracks)
    per_genre = Counter(t["genre_top"] for t in good_top)
    assert per_genre["Rock"] > 3 * per_genre["Easy Listening"]  # imbalanced like FMA
    assert per_genre["Electronic"] > 3 * per_genre["Blues"]


@pytest.mark.parametrize("n_tracks", [300, 400])
def test_plan_every_genre_in_every_split(n_tracks):
    specs = plan(n_tracks, seed=3)
    good = [s for s in specs if s["kind"] == "good" and s["genre_top"]]
    per = Counter((s["genre_top"], s["split"]) for s in good)
    for genre in fma.CLASS_NAMES:
        for split in fma.SPLITS:
            assert per[(genre, split)] >= 2, (genre, split)
    counts = Counter(s["split"] for s in specs)
    assert 0.65 < counts["training"] / n_tracks < 0.9
    kinds = Counter(s["kind"] for s in specs)
    assert 0.05 <= (n_tracks - kinds["good"]) / n_tracks <= 0.08


@pytest.mark.parametrize("n_tracks", [60, 61, 120, 1000])
def test_plan_has_every_bad_kind(n_tracks):
    specs = plan(n_tracks, seed=n_tracks)
    assert len(specs) == n_tracks == len({s["track_id"] for s in specs})
    kinds = Counter(s["kind"] for s in specs)
    assert set(BAD_KINDS) <= set(kinds)
    bad = [s for s in specs if s["kind"] != "good"]
    assert len(bad) <= max(0.08 * n_tracks, 8)  # below 100 tracks one of each kind + 2 errata ids
    errata = [s for s in bad if s["track_id"] in fma.KNOWN_BAD]
    assert {s["track_id"] for s in errata} & set(fma.UNREADABLE_IDS)
    assert {s["track_id"] for s in errata} & set(fma.EMPTY_IDS)
    generic = [s for s in bad if s["track_id"] not in fma.KNOWN_BAD]
    assert all(s["csv_duration"] > 29 for s in generic)
    assert sum(s["genre_top"] is not None for s in bad) > len(bad) / 2
    assert not [s for s in specs if s["kind"] == "good" and s["track_id"] in fma.KNOWN_BAD]


def test_plan_small_sets_still_have_several_test_genres():
    specs = plan(20, seed=0)
    test_genres = {s["genre_top"] for s in specs if s["split"] == "test" and s["genre_top"]}
    assert len(test_genres) >= 3
    assert plan(1, seed=0)[0]["kind"] == "good"


# --------------------------------------------------------------------------- the MP3 files


def test_good_files_decode_to_declared_format(mini_fma):
    from mutagen.id3 import ID3
    from mutagen.mp3 import MP3

    fma_dir, truth = mini_fma
    good = by_kind(truth, "good")
    assert len(good) >= 100
    formats = Counter()
    for tid, t in good.items():
        path = fma_dir / t["path"]
        d = decode(path)
        assert d.sample_rate == t["sample_rate"], tid
        assert d.nchannels == t["channels"], tid
        if t["xing"] or not t["vbr"]:  # else libsndfile trusts a length estimated from the first frame
            assert abs(d.duration - t["duration_s"]) < 0.2, (tid, d.duration)
        assert t["duration_s"] in (30.0, 240.0), tid
        peak = float(np.abs(d.samples).max())
        if t["master"] == "loud":  # hard-clipped master: MP3 decoding overshoots full scale
            assert 1.0 < peak < 1.45, (tid, peak)
        elif t["master"] == "quiet":
            assert abs(20 * np.log10(peak) - t["peak_dbfs"]) < 1.5, (tid, peak)
        else:
            assert 0.05 < peak <= 1.0, (tid, peak)
        if t["dc_offset"] and t["master"] == "normal":  # (a clipped loud master has a DC of its own)
            assert abs(float(d.samples.mean()) - t["dc_offset"]) < 0.01, tid
        if t["lead_in_s"]:
            lead = int(t["lead_in_s"] * t["sample_rate"]) - 1200  # minus the decoder's ringing
            assert np.abs(d.samples[:lead]).max() < 1e-3 < np.abs(d.samples[lead + 2400 :]).max(), tid
        if t["true_stereo"]:
            assert abs(np.corrcoef(d.samples[:, 0], d.samples[:, 1])[0, 1]) < 0.5, tid
        info = MP3(path).info
        assert info.sample_rate == t["sample_rate"] and info.channels == t["channels"]
        assert str(info.version).rstrip("0").rstrip(".") == t["mpeg_version"], tid
        assert ("stereo", "joint_stereo", "dual_channel", "mono")[info.mode] == t["channel_mode"], tid
        assert path.read_bytes()[-128:].startswith(b"TAG") == t["id3v1"], tid
        if t["vbr"] and t["xing"]:  # the Xing header gives readers the mean bit rate and the length
            assert abs(info.bitrate / 1000 - t["bitrate_kbps"]) < 0.05 * t["bitrate_kbps"], tid
            assert abs(info.length - t["duration_s"]) < 0.2, tid
        elif not t["vbr"]:
            assert info.bitrate == t["bitrate_kbps"] * 1000, tid
        tags = ID3(path)
        assert tags["TIT2"].text[0] and tags["TPE1"].text[0]
        if t["genre_top"]:
            assert tags["TCON"].text[0] == t["genre_top"]
        covers = tags.getall("APIC")
        assert bool(covers) == t["cover_art"], tid
        if covers:
            assert covers[0].data.startswith(b"\x89PNG")
        formats[(t["sample_rate"], t["channels"], "vbr" if t["vbr"] else t["bitrate_kbps"])] += 1
    rates = Counter(t["sample_rate"] for t in good.values())
    assert rates.most_common(1)[0][0] == 44100
    assert set(rates) == {8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}
    assert {t["mpeg_version"] for t in good.values()} == {"1", "2", "2.5"}
    assert {t["channel_mode"] for t in good.values()} == {"stereo", "joint_stereo", "mono"}
    masters = Counter(t["master"] for t in good.values())
    assert masters["loud"] >= 3 and masters["quiet"] >= 1 and masters["normal"] > len(good) // 2
    for flag in ("true_stereo", "dc_offset", "lead_in_s", "id3v1"):
        assert any(t[flag] for t in good.values()), flag
    assert any(t["vbr"] and not t["xing"] for t in good.values())
    assert formats.most_common(1)[0][0] == (44100, 2, 320)
    assert any(t["channels"] == 1 for t in good.values())
    assert any(t["vbr"] for t in good.values())
    assert {256, 128} <= {t["bitrate_kbps"] for t in good.values() if not t["vbr"]}
    assert any(t["cover_art"] for t in good.values()) and not all(t["cover_art"] for t in good.values())


def test_bad_files_are_bad_in_the_declared_way(mini_fma):
    import soundfile

    fma_dir, truth = mini_fma
    seen = Counter()
    for tid, t in truth["tracks"].items():
        path = fma_dir / t["path"]
        kind = t["kind"]
        seen[kind] += 1
        if kind == "good":
            continue
        if kind == "missing":
            assert not path.exists() and not any(path.parent.glob(f"*{path.name}*")), tid
            continue
        assert path.is_file(), tid
        if kind == "zero_byte":
            assert path.stat().st_size == 0
        elif kind == "random_bytes":
            assert path.stat().st_size > 1000 and not path.read_bytes().startswith(b"ID3")
            with pytest.raises(soundfile.LibsndfileError):
                decode(path)
        elif kind == "truncated":
            try:
                d = decode(path)
            except soundfile.LibsndfileError:
                continue
            assert d.duration < 10.0
        elif kind == "short":
            d = decode(path)
            assert 0 < d.duration < 2.0
            assert np.abs(np.asarray(d.samples)).max() > 0.01
        elif kind == "silence":
            d = decode(path)
            assert abs(d.duration - 30.0) < 0.2
            assert np.abs(np.asarray(d.samples)).max() < 1e-4
        else:
            pytest.fail(f"unknown kind {kind!r}")
    assert set(BAD_KINDS) <= set(seen)
    n_bad = sum(v for k, v in seen.items() if k != "good")
    assert 0.05 <= n_bad / truth["n_tracks"] <= 0.08
    ids = {int(k) for k in truth["tracks"]}
    assert ids & set(fma.UNREADABLE_IDS) and ids & set(fma.EMPTY_IDS)
    assert not list((fma_dir / "fma_large").rglob(".*"))  # no temp files left


def test_truth_json_matches_return_value_and_contract(mini_fma):
    fma_dir, truth = mini_fma
    assert json.loads((fma_dir / "synth_truth.json").read_text(encoding="utf-8")) == truth
    assert truth["seed"] == 0 and truth["n_tracks"] == 120
    fields = {
        "genre_top",
        "split",
        "subset",
        "kind",
        "sample_rate",
        "channels",
        "bitrate_kbps",
        "vbr",
        "duration_s",
        "cover_art",
        "path",
        "mpeg_version",
        "channel_mode",
        "master",
        "drive_db",
        "peak_dbfs",
        "dc_offset",
        "lead_in_s",
        "true_stereo",
        "xing",
        "id3v1",
    }
    for tid, t in truth["tracks"].items():
        assert tid.isdigit() and set(t) == fields
        assert t["split"] in fma.SPLITS and t["subset"] in fma.SUBSETS
        assert t["genre_top"] is None or t["genre_top"] in fma.CLASS_NAMES
    files = {p.relative_to(fma_dir).as_posix() for p in (fma_dir / "fma_large").rglob("*.mp3")}
    listed = {t["path"] for t in truth["tracks"].values() if t["kind"] != "missing"}
    assert files == listed


# --------------------------------------------------------------------------- determinism, CLI, errors


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = generate(tmp_path / "a", 12, seed=5, jobs=1)
    b = generate(tmp_path / "b", 12, seed=5, jobs=2)  # a process pool gives the same bytes
    c = generate(tmp_path / "c", 12, seed=6, jobs=1)
    assert a == b

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    fa, fb, fc = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(fa) >= 12 and fa == fb
    assert a != c and set(fa) != set(fc)
    assert fa["fma_metadata/tracks.csv"] != fc["fma_metadata/tracks.csv"]
    mp3_a = sorted(v for k, v in fa.items() if k.endswith(".mp3"))
    mp3_c = sorted(v for k, v in fc.items() if k.endswith(".mp3"))
    assert not set(mp3_a) & set(mp3_c)
    # Regenerating into a generated folder replaces it, byte for byte.
    assert generate(tmp_path / "c", 12, seed=5, jobs=1) == a
    assert files(tmp_path / "c") == fa


def test_refuses_to_overwrite_foreign_data(tmp_path):
    (tmp_path / "fma_large" / "000").mkdir(parents=True)
    precious = tmp_path / "fma_large" / "000" / "000002.mp3"
    precious.write_bytes(b"real data")
    with pytest.raises(ValueError, match="not made by preprocess.synth"):
        generate(tmp_path, 5, seed=0)
    assert precious.read_bytes() == b"real data"
    with pytest.raises(ValueError, match="n_tracks"):
        generate(tmp_path / "x", 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate(tmp_path / "x", 3, seed=-1)


def test_regenerates_over_a_killed_run(tmp_path):
    # What a run killed half-way leaves: the in-progress marker, some files, a temp file, no truth.
    from preprocess.synth.generator import IN_PROGRESS

    (tmp_path / "fma_large" / "001").mkdir(parents=True)
    (tmp_path / "fma_large" / "001" / ".001234.mp3.tmp-99").write_bytes(b"half")
    (tmp_path / "fma_large" / "001" / "001234.mp3").write_bytes(b"stale")
    (tmp_path / IN_PROGRESS).write_text("")
    truth = generate(tmp_path, 3, seed=0, jobs=1)
    on_disk = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "fma_large").rglob("*") if p.is_file()}
    assert on_disk == {t["path"] for t in truth["tracks"].values()}
    assert not (tmp_path / IN_PROGRESS).exists()


@pytest.mark.slow
def test_cli(tmp_path, python, subprocess_env, repo_root):
    help_text = subprocess.run(
        [python, "-m", "preprocess.synth", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        cwd=repo_root,
        check=True,
    ).stdout
    for word in ("--out", "--tracks", "--seed", "--jobs", "tracks.csv", "synth_truth.json"):
        assert word in help_text
    proc = subprocess.run(
        [
            python,
            "-m",
            "preprocess.synth",
            "--out",
            str(tmp_path / "m"),
            "--tracks",
            "3",
            "--seed",
            "1",
            "--jobs",
            "1",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env,
        cwd=repo_root,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 tracks (seed 1)" in proc.stdout and "kind:" in proc.stdout
    truth = json.loads((tmp_path / "m" / "synth_truth.json").read_text())
    assert len(truth["tracks"]) == 3
    bad = subprocess.run(
        [python, "-m", "preprocess.synth", "--out", str(tmp_path / "m"), "--tracks", "0"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        cwd=repo_root,
    )
    assert bad.returncode != 0 and "n_tracks" in bad.stderr


# --------------------------------------------------------------------------- genres are learnable


def _mean_logmel(path: Path) -> np.ndarray:
    """Mean log-mel spectrum (64 bands) of the first 10 s, at 22.05 kHz mono."""
    import librosa

    y, _ = librosa.load(path, sr=22050, mono=True, duration=10.0)
    return _logmel_profile(y)


def _logmel_profile(y: np.ndarray, with_std: bool = False) -> np.ndarray:
    """Mean log-mel spectrum (64 bands) of mono samples at 22.05 kHz; ``with_std``: and each band's
    standard deviation over time (how it moves: rhythm, note lengths)."""
    import librosa

    mel = librosa.feature.melspectrogram(y=y, sr=22050, n_fft=1024, hop_length=512, n_mels=64)
    db = librosa.power_to_db(mel, ref=np.max)
    return np.concatenate([db.mean(axis=1), db.std(axis=1)]) if with_std else db.mean(axis=1)


def _nearest_centroid_accuracy(feats: dict[str, np.ndarray]) -> float:
    """Leave-one-out nearest-centroid accuracy over groups of feature rows."""
    correct = total = 0
    for g, rows in feats.items():
        for i in range(len(rows)):
            dists = {}
            for h, others in feats.items():
                others = np.delete(others, i, axis=0) if h == g else others
                dists[h] = np.linalg.norm(rows[i] - others.mean(axis=0))
            correct += min(dists, key=dists.get) == g
            total += 1
    return correct / total


@pytest.mark.parametrize("top", ["Rock", "Electronic", "Experimental"])
def test_sub_genres_differ_within_a_top_genre(top):
    """Each sub-genre has its own tempo, rhythm, register or timbre: tracks of the plain top genre
    and of each of its sub-genres are told apart by their spectrum and rhythm far above chance."""
    from preprocess.synth.audio import genre_style, synthesize
    from preprocess.synth.meta import TOP_ID, genres_under

    groups = genres_under(TOP_ID[top])
    assert len(groups) >= 4  # the top genre and at least three sub-genres
    feats = {}
    for g in groups:
        rows = []
        for k in range(4):
            rng = np.random.default_rng([7, g, k])
            y = synthesize([genre_style(g)], rng, 22050, 12.0, 1)[:, 0]
            rows.append(_logmel_profile(y, with_std=True))
        feats[str(g)] = np.stack(rows)
    accuracy = _nearest_centroid_accuracy(feats)
    assert accuracy > 2 / len(groups), (top, accuracy)  # measured: 0.78, 0.71, 0.75
    styles = [genre_style(g) for g in groups]
    assert len(set(styles)) == len(groups)  # each sub-genre changes its parent's style


def test_genres_differ_more_than_tracks_of_a_genre(mini_fma):
    fma_dir, truth = mini_fma
    good = [
        (t["genre_top"], fma_dir / t["path"])
        for t in truth["tracks"].values()
        if t["kind"] == "good" and t["genre_top"]
    ]
    per_genre: dict[str, list[Path]] = {}
    for genre, path in good:
        per_genre.setdefault(genre, []).append(path)
    genres = [g for g in sorted(per_genre) if len(per_genre[g]) >= 3]
    assert len(genres) >= 12
    feats = {g: np.stack([_mean_logmel(p) for p in per_genre[g][:3]]) for g in genres}
    # Leave-one-out nearest centroid on mean log-mel spectra: far above chance (1/len(genres)).
    accuracy = _nearest_centroid_accuracy(feats)
    assert accuracy > 3 / len(genres), accuracy
    # Two tracks of one genre are closer than two tracks of different genres, on average.
    pairs = ((0, 1), (0, 2), (1, 2))
    within = np.mean([np.linalg.norm(f[i] - f[j]) for f in feats.values() for i, j in pairs])
    between = np.mean(
        [
            np.linalg.norm(feats[g][i] - feats[h][j])
            for g in genres
            for h in genres
            if g < h
            for i in range(3)
            for j in range(3)
        ]
    )
    assert between > 1.2 * within, (between, within)
