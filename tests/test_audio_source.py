"""preprocess.audio_source: finding the audio (tree or zip) and reading members, with real damaged zips."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from preprocess.audio_source import (
    AudioSource,
    AudioSourceError,
    MemberError,
    find_audio_source,
    missing_tracks,
    open_tracks,
    track_location,
    zip_source,
)
from preprocess.fma import audio_relpath
from preprocess.synth_zip import zip_audio_tree

IDS = (2, 5, 1039, 140449)


@pytest.fixture
def tree(tmp_path) -> Path:
    """FMA_DIR with fma_large/NNN/NNNNNN.mp3 files of random bytes (the reader never decodes)."""
    rng = np.random.default_rng(0)
    for tid in IDS:
        path = tmp_path / "fma_large" / audio_relpath(tid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(5000 + tid % 997))
    (tmp_path / "fma_large" / "README.txt").write_text("fma_large (test copy)\n")
    return tmp_path


def _zip_only(fma_dir: Path) -> Path:
    """Pack fma_large/ into fma_large.zip and remove the tree."""
    path = zip_audio_tree(fma_dir, "fma_large")
    for p in sorted((fma_dir / "fma_large").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (fma_dir / "fma_large").rmdir()
    return path


def _central_entry(data: bytes, name: str) -> int:
    """Offset of ``name``'s entry in the zip's central directory."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        offset = zf.start_dir
        for _ in zf.infolist():
            assert data[offset:offset + 4] == b"PK\x01\x02"
            n, m, k = struct.unpack("<HHH", data[offset + 28:offset + 34])
            if data[offset + 46:offset + 46 + n].decode() == name:
                return offset
            offset += 46 + n + m + k
    raise KeyError(name)


def test_zip_members_read_back_as_the_tree_files(tree):
    source_tree = find_audio_source(tree, "large")
    assert source_tree == AudioSource(str((tree / "fma_large").absolute())) and not source_tree.is_zip
    expected = {tid: (tree / "fma_large" / audio_relpath(tid)).read_bytes() for tid in IDS}
    with open_tracks(source_tree) as read:
        assert {tid: read(tid).read_bytes() for tid in IDS} == expected
    zip_path = _zip_only(tree)
    source = find_audio_source(tree, "large")  # no tree any more: the zip is found
    assert source == AudioSource(str(zip_path.absolute()), member_prefix="fma_large/")
    with zipfile.ZipFile(zip_path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_BZIP2}
    with open_tracks(source) as read:
        got = {tid: read(tid) for tid in IDS}
    assert all(isinstance(f, io.BytesIO) for f in got.values())
    assert {tid: f.getvalue() for tid, f in got.items()} == expected
    assert track_location(source, 2) == f"fma_large/000/000002.mp3 in {zip_path.absolute()}"
    assert source == AudioSource.from_dict(source.to_dict())


def test_tree_is_preferred_and_subsets_fall_back_to_larger_ones(tree, tmp_path):
    zip_path = zip_audio_tree(tree, "fma_large")
    assert not find_audio_source(tree, "medium").is_zip  # fma_large/ holds medium's tracks
    assert find_audio_source(tree, "small", audio_zip=zip_path).path == str(zip_path.absolute())
    zip_only = tmp_path / "zip-only"
    zip_only.mkdir()
    zip_path.rename(zip_only / "fma_large.zip")
    assert find_audio_source(zip_only, "small").path == str((zip_only / "fma_large.zip").absolute())
    # A zip with another top folder (a mirror's repack) is read with its own prefix.
    other = zip_audio_tree(tree, "fma_large", zip_path=tmp_path / "mirror.zip")
    with zipfile.ZipFile(other) as zf, zipfile.ZipFile(tmp_path / "renamed.zip", "w") as out:
        for info in zf.infolist():
            out.writestr("audio/" + info.filename.split("/", 1)[1], zf.read(info))
    renamed = zip_source(tmp_path / "renamed.zip")
    assert renamed.member_prefix == "audio/" and missing_tracks(renamed, [*IDS, 3]) == [3]


def test_nothing_found_says_where_it_looked(tmp_path):
    with pytest.raises(AudioSourceError) as info:
        find_audio_source(tmp_path, "medium")
    message = str(info.value)
    for name in ("fma_medium/", "fma_large/", "fma_medium.zip", "fma_large.zip", "make download", "UNPACK=0",
                 "--audio-zip"):
        assert name in message
    (tmp_path / "fma_large.zip.part").write_bytes(b"PK")
    with pytest.raises(AudioSourceError, match="fma_large.zip.part is an unfinished download"):
        find_audio_source(tmp_path, "large")
    with pytest.raises(AudioSourceError, match="download is not finished"):
        find_audio_source(tmp_path, "large", audio_zip=tmp_path / "fma_large.zip")
    (tmp_path / "notfma.zip").write_bytes(_zip_bytes({"hello.txt": b"hi"}))
    with pytest.raises(AudioSourceError, match="no member is an FMA track"):
        zip_source(tmp_path / "notfma.zip")


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "central directory signature", "not a zip"])
def test_damaged_directory_is_a_run_level_error_naming_the_zip(tree, damage):
    zip_path = _zip_only(tree)
    data = bytearray(zip_path.read_bytes())
    source = zip_source(zip_path)  # read while intact, as a run's plan is
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "central directory signature":
        data[_central_entry(bytes(data), "fma_large/000/000002.mp3")] ^= 0xFF
    else:
        data = bytearray(b"<html>503 Service Unavailable</html>")
    zip_path.write_bytes(bytes(data))
    for attempt in (lambda: find_audio_source(tree, "large"), lambda: open_tracks(source).__enter__()):
        with pytest.raises(AudioSourceError) as info:
            attempt()
        message = str(info.value)
        assert str(zip_path.absolute()) in message and "damaged or incomplete" in message
        assert "make download UNPACK=0" in message


def test_missing_member_fails_only_its_track(tree):
    (tree / "fma_large" / audio_relpath(1039)).unlink()
    source = zip_source(zip_audio_tree(tree, "fma_large", zip_path=tree / "fma_large.zip"))
    assert missing_tracks(source, list(IDS)) == [1039]
    with open_tracks(source) as read:
        with pytest.raises(MemberError) as info:
            read(1039)
        assert read(5).getvalue() == (tree / "fma_large" / audio_relpath(5)).read_bytes()
    assert str(info.value) == f"missing file: no member fma_large/001/001039.mp3 in {source.path}"


@pytest.mark.parametrize("damage,said", [("crc", "Bad CRC-32"), ("bzip2 data", "Invalid data stream"),
                                          ("local header", "Bad magic number for file header")])
def test_damaged_member_fails_its_track_naming_zip_and_member(tree, damage, said):
    zip_path = _zip_only(tree)
    data = bytearray(zip_path.read_bytes())
    name = "fma_large/001/001039.mp3"
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    if damage == "crc":  # the CRC-32 recorded in the directory no longer matches the data
        data[_central_entry(bytes(data), name) + 16] ^= 0xFF
    elif damage == "bzip2 data":
        data[start + info.compress_size // 2] ^= 0xFF
    else:
        data[info.header_offset] ^= 0xFF
    zip_path.write_bytes(bytes(data))
    source = zip_source(zip_path)  # the directory itself is fine
    with open_tracks(source) as read:
        with pytest.raises(MemberError) as failure:
            read(1039)
        for tid in set(IDS) - {1039}:  # the other members still read
            read(tid)
    message = str(failure.value)
    assert message.startswith(f"bad zip member: {name} in {zip_path.absolute()}: ") and said in message
