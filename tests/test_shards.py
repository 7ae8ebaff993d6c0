"""Write-then-read round trips of the shard format."""

import json
import os

import h5py
import numpy as np
import pytest

import shards

CLASSES = [f"genre{i}" for i in range(16)]


def _write(folder, n=50, split="train", index=0, num=1, **kw):
    rng = np.random.default_rng(n)
    mel = rng.normal(-40, 10, size=(n, 128, 128)).astype(np.float32)
    label = rng.integers(0, 16, size=n)
    track_id = np.sort(rng.choice(100000, size=n, replace=False))
    path = folder / shards.shard_name(split, index, num)
    checksum = shards.write_shard(
        path,
        mel=mel,
        label=label,
        track_id=track_id,
        split=split,
        shard_index=index,
        num_shards=num,
        subset="large",
        recipe={"name": "reference", "n_mels": 128},
        class_names=CLASSES,
        failed=[(7, "empty file")],
        **kw,
    )
    return path, mel, label, track_id, checksum


def test_round_trip(tmp_path):
    path, mel, label, track_id, checksum = _write(tmp_path)
    s = shards.read_shard(path, verify=True)
    assert s.checksum == checksum == shards.content_checksum(mel, label, track_id)
    np.testing.assert_array_equal(s.label, label)
    np.testing.assert_array_equal(s.track_id, track_id)
    assert s.failed == [(7, "empty file")]
    assert s.recipe == {"name": "reference", "n_mels": 128}
    assert s.class_names == CLASSES
    np.testing.assert_array_equal(shards.mel_memmap(path), mel)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left behind"


def test_chunks_are_contiguous_in_file(tmp_path):
    path, mel, *_ = _write(tmp_path, n=40)
    with h5py.File(path, "r") as f:
        assert f["mel"].chunks == (1, 128, 128)
        offsets = []
        f["mel"].id.chunk_iter(lambda info: offsets.append(info.byte_offset))
    assert np.all(np.diff(offsets) == 128 * 128 * 4)
    layout = shards.data_layout(path, "mel")
    assert layout.offset == offsets[0]


def test_compressed_shard_is_not_mapped_but_readable(tmp_path):
    path, mel, *_ = _write(tmp_path, compression="gzip")
    assert shards.mel_memmap(path) is None
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["mel"][()], mel)
    shards.read_shard(path, verify=True)


def test_flipped_byte_is_caught(tmp_path):
    path, *_ = _write(tmp_path)
    layout = shards.data_layout(path)
    with open(path, "r+b") as fh:
        fh.seek(layout.offset + 1000)
        byte = fh.read(1)
        fh.seek(layout.offset + 1000)
        fh.write(bytes([byte[0] ^ 0x40]))
    shards.read_shard(path)  # metadata is intact
    with pytest.raises(shards.ShardError, match=path.name):
        shards.read_shard(path, verify=True)


def test_truncated_file_is_caught(tmp_path):
    path, *_ = _write(tmp_path)
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(shards.ShardError, match=path.name):
        shards.read_shard(path)


def test_bad_input_is_refused_and_nothing_written(tmp_path):
    mel = np.zeros((3, 128, 128), np.float32)
    mel[1, 2, 3] = np.nan
    path = tmp_path / shards.shard_name("test", 0, 1)
    with pytest.raises(ValueError, match="NaN"):
        shards.write_shard(
            path,
            mel=mel,
            label=[0, 1, 2],
            track_id=[1, 2, 3],
            split="test",
            shard_index=0,
            num_shards=1,
            subset="small",
            recipe={},
            class_names=CLASSES,
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="strictly increasing"):
        shards.write_shard(
            path,
            mel=np.zeros((2, 128, 128), np.float32),
            label=[0, 1],
            track_id=[5, 2],
            split="test",
            shard_index=0,
            num_shards=1,
            subset="small",
            recipe={},
            class_names=CLASSES,
        )


def test_shard_names():
    assert shards.shard_name("validation", 3, 50) == "validation-00003-of-00050.h5"
    assert shards.parse_shard_name("validation-00003-of-00050.h5") == ("validation", 3, 50)
    with pytest.raises(ValueError):
        shards.parse_shard_name("val-3.h5")


def test_manifest_round_trip_and_errors(tmp_path):
    manifest = {
        "format_version": shards.FORMAT_VERSION,
        "subset": "small",
        "recipe": {},
        "class_names": CLASSES,
        "shards": [
            {"name": "train-00000-of-00001.h5", "split": "train", "num_tracks": 3, "checksum": "sha256:00"}
        ],
        "totals": {},
    }
    shards.write_manifest(tmp_path, manifest)
    assert shards.read_manifest(tmp_path) == manifest
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "class_names": []}))
    with pytest.raises(shards.ShardError, match="manifest.json"):
        shards.read_manifest(tmp_path)
    with pytest.raises(shards.ShardError, match="no manifest"):
        shards.read_manifest(tmp_path / "nowhere")


# --------------------------------------------------------------------------- extra datasets (v2)

GENRE_TABLE = [
    {"id": 1, "title": "Avant-Garde", "parent": 38, "top_level": 38},
    {"id": 38, "title": "Experimental", "parent": 0, "top_level": 38},
    {"id": 12, "title": "Rock", "parent": 0, "top_level": 12},
]


def _extras(n, seed=0):
    rng = np.random.default_rng(seed)
    fine = rng.normal(-40, 10, size=(n, 128, 300)).astype(np.float16)
    genres = (rng.random((n, len(GENRE_TABLE))) < 0.4).astype(np.uint8)
    return {
        "mel_fine": (fine, {"recipe": {"name": "fine", "n_frames": 300}}),
        "genres": (genres, {"genre_table": GENRE_TABLE}),
    }


def test_a_shard_without_extras_is_the_first_format(tmp_path):
    path, *_ = _write(tmp_path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 1
        assert "extras" not in f.attrs
        assert sorted(f) == [
            "failed_reason",
            "failed_track_id",
            "label",
            "mel",
            "padded_seconds",
            "padded_track_id",
            "track_id",
        ]
    same = tmp_path / "again"
    same.mkdir()
    path2, *_ = _write(same, extras={})
    assert path.read_bytes() == path2.read_bytes()


def test_extras_round_trip_and_memory_map(tmp_path):
    extras = _extras(50)
    path, mel, label, track_id, checksum = _write(tmp_path, extras=extras)
    s = shards.read_shard(path, verify=True)
    assert s.extras == {name: about for name, (_, about) in extras.items()}
    assert s.extra_shapes == {"mel_fine": (50, 128, 300), "genres": (50, 3)}
    data = {name: d for name, (d, _) in extras.items()}
    assert checksum == s.checksum == shards.content_checksum(mel, label, track_id, data)
    assert checksum != shards.content_checksum(mel, label, track_id)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == shards.EXTRAS_FORMAT_VERSION
        assert f["mel_fine"].chunks == (1, 128, 300)
    fine = shards.memmap(path, shards.data_layout(path, "mel_fine"))
    assert fine.dtype == np.float16
    np.testing.assert_array_equal(fine, data["mel_fine"])
    np.testing.assert_array_equal(shards.read_extra(path, "genres"), data["genres"])
    np.testing.assert_array_equal(shards.mel_memmap(path), mel)


def test_compressed_extras_read_back(tmp_path):
    extras = _extras(20)
    path, *_ = _write(tmp_path, n=20, extras=extras, compression="gzip")
    assert shards.data_layout(path, "mel_fine") is None
    np.testing.assert_array_equal(shards.read_extra(path, "mel_fine"), extras["mel_fine"][0])
    shards.read_shard(path, verify=True)


def test_a_flipped_byte_in_an_extra_is_caught(tmp_path):
    path, *_ = _write(tmp_path, extras=_extras(50))
    layout = shards.data_layout(path, "mel_fine")
    with open(path, "r+b") as fh:
        fh.seek(layout.offset + 4001)
        byte = fh.read(1)
        fh.seek(layout.offset + 4001)
        fh.write(bytes([byte[0] ^ 0x01]))
    shards.read_shard(path)
    with pytest.raises(shards.ShardError, match="checksum"):
        shards.read_shard(path, verify=True)


def test_no_label_only_in_a_shard_with_genres(tmp_path):
    mel = np.zeros((2, 128, 128), np.float32)
    common = dict(
        mel=mel,
        label=[-1, 3],
        track_id=[1, 2],
        split="test",
        shard_index=0,
        num_shards=1,
        subset="small",
        recipe={},
        class_names=CLASSES,
    )
    path = tmp_path / shards.shard_name("test", 0, 1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 16\)"):
        shards.write_shard(path, **common)
    genres = np.array([[1, 0, 0], [0, 0, 1]], np.uint8)
    shards.write_shard(path, **common, extras={"genres": (genres, {"genre_table": GENRE_TABLE})})
    assert shards.read_shard(path, verify=True).label.tolist() == [shards.NO_LABEL, 3]


@pytest.mark.parametrize(
    "extras, problem",
    [
        ({"mel_coarse": (np.zeros((2, 4), np.float16), {})}, "unknown extra dataset 'mel_coarse'"),
        ({"mel_fine": (np.zeros((2, 128, 9), np.float32), {})}, "mel_fine must be float16"),
        ({"mel_fine": (np.zeros((3, 128, 9), np.float16), {})}, "and 2 rows"),
        ({"genres": (np.full((2, 3), 2, np.uint8), {})}, "0 or 1"),
        ({"mel_fine": (np.full((2, 128, 9), np.inf, np.float16), {})}, "NaN or infinite"),
    ],
)
def test_bad_extras_are_refused_and_nothing_written(tmp_path, extras, problem):
    path = tmp_path / shards.shard_name("test", 0, 1)
    with pytest.raises(ValueError, match=problem):
        shards.write_shard(
            path,
            mel=np.zeros((2, 128, 128), np.float32),
            label=[0, 1],
            track_id=[1, 2],
            split="test",
            shard_index=0,
            num_shards=1,
            subset="small",
            recipe={},
            class_names=CLASSES,
            extras=extras,
        )
    assert list(tmp_path.iterdir()) == []


def test_read_extra_names_the_shard_without_it(tmp_path):
    path, *_ = _write(tmp_path)
    with pytest.raises(shards.ShardError, match=f"{path.name}.*no 'genres' dataset"):
        shards.read_extra(path, "genres")
