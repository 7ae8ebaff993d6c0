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
