"""Bad tracks.csv through the features command: a clear error naming file and column, nothing written.

tests/test_metadata.py checks ``load_tracks`` itself (a missing genre_top column, one header
line, an empty file, a genre outside the 16 in ``select_tracks``); here the same faults and
more go through ``python -m preprocess features`` as a user runs it: exit code 2, one
``error:`` line naming tracks.csv and the column, no traceback, no output written; a
genre outside the 16 is a reported skip, in the summary and in manifest.json.
"""

from __future__ import annotations

import pandas as pd
import pytest

from preprocess.__main__ import main
from preprocess.metadata import REQUIRED_COLUMNS, load_tracks, tracks_csv_path
from shards import read_manifest, read_shard


@pytest.fixture(scope="module")
def tracks(mini_fma) -> pd.DataFrame:
    return load_tracks(tracks_csv_path(mini_fma[0]))


def fma_dir_with(tmp_path, mini_fma, write) -> tuple:
    """A dataset folder: the generated audio (linked, not copied) and a tracks.csv made by ``write``."""
    fma_dir = tmp_path / "fma"
    (fma_dir / "fma_metadata").mkdir(parents=True)
    (fma_dir / "fma_large").symlink_to(mini_fma[0] / "fma_large", target_is_directory=True)
    csv = tracks_csv_path(fma_dir)
    write(csv)
    return fma_dir, csv


def run_features(fma_dir, out, capsys, subset="large") -> tuple[int, str, str]:
    code = main(
        [
            "features",
            "--fma-dir",
            str(fma_dir),
            "--subset",
            subset,
            "--out",
            str(out),
            "--jobs",
            "2",
            "--shard-size",
            "8",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clear_error(code, err, csv, out, *needles) -> None:
    assert code == 2
    assert err.startswith("error: ") and "Traceback" not in err
    assert str(csv) in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists() or not any(out.iterdir())  # nothing written: no plan, no shard


@pytest.mark.parametrize("column", REQUIRED_COLUMNS, ids=lambda c: "-".join(c))
def test_missing_column_is_named(column, tracks, mini_fma, tmp_path, capsys):
    fma_dir, csv = fma_dir_with(tmp_path, mini_fma, lambda p: tracks.drop(columns=[column]).to_csv(p))
    code, _, err = run_features(fma_dir, tmp_path / "out", capsys)
    assert_clear_error(code, err, csv, tmp_path / "out", str(column), "missing")


def _first_lines(csv_source):
    return csv_source.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("shape", ["one_header_line", "no_track_id_line", "header_only"])
def test_wrong_header_shape_is_explained(shape, mini_fma, tmp_path, capsys):
    lines = _first_lines(tracks_csv_path(mini_fma[0]))
    assert lines[2].startswith("track_id")
    if shape == "one_header_line":  # e.g. a flattened export: 'track_id,set_split,...'
        flat = ",".join(
            f"{a}_{b}"
            for a, b in zip(lines[0].rstrip("\n").split(","), lines[1].rstrip("\n").split(","), strict=True)
        )
        text = "track_id" + flat[flat.index(",") :] + "\n" + "".join(lines[3:])
    elif shape == "no_track_id_line":  # the third header line dropped
        text = "".join(lines[:2] + lines[3:])
    else:  # cut off after the header
        text = "".join(lines[:3])
    fma_dir, csv = fma_dir_with(tmp_path, mini_fma, lambda p: p.write_text(text))
    code, _, err = run_features(fma_dir, tmp_path / "out", capsys)
    if shape == "header_only":
        # Well formed but without a single track: said so, naming the file.
        assert_clear_error(code, err, csv, tmp_path / "out", "no track")
    else:
        assert_clear_error(code, err, csv, tmp_path / "out", "header")


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary"],
    ids=["empty", "blank_lines", "binary"],
)
def test_empty_or_garbled_file_is_named(content, mini_fma, tmp_path, capsys):
    fma_dir, csv = fma_dir_with(tmp_path, mini_fma, lambda p: p.write_bytes(content))
    code, _, err = run_features(fma_dir, tmp_path / "out", capsys)
    assert_clear_error(code, err, csv, tmp_path / "out")


def test_genre_outside_the_16_is_a_reported_skip(tracks, mini_fma, tmp_path, capsys):
    small = tracks[tracks[("set", "subset")] == "small"]
    victim = int(small[small[("track", "genre_top")].notna()].index[0])
    edited = tracks.copy()
    edited[("track", "genre_top")] = edited[("track", "genre_top")].astype(object)
    edited.loc[victim, ("track", "genre_top")] = "Polka"
    fma_dir, _ = fma_dir_with(tmp_path, mini_fma, edited.to_csv)
    out = tmp_path / "out"
    code, stdout, err = run_features(fma_dir, out, capsys, subset="small")
    assert code == 0, err
    reason = "genre_top 'Polka' is not one of the 16 top-level genres"
    assert f"{reason} x1" in stdout  # the run's summary
    manifest = read_manifest(out)
    assert manifest["skipped"][reason] == [victim]
    held = set()
    for entry in manifest["shards"]:
        shard = read_shard(out / entry["name"])
        held |= set(shard.track_id.tolist()) | {t for t, _ in shard.failed}
    assert victim not in held and len(held) >= 10
