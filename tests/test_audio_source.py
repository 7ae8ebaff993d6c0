"""preprocess.audio_source: finding the audio (tree or zip) and reading members, with real damaged zips."""

from __future__ import annotations

import io
import logging
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from preprocess import driver
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
from preprocess.options import FeatureOptions
from preprocess.recipe import RECIPES
from preprocess.synth.zipped import zip_audio_tree, zip_only_copy
from preprocess.verify import verify_shards
from shards import read_manifest, read_shard

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
            assert data[offset : offset + 4] == b"PK\x01\x02"
            n, m, k = struct.unpack("<HHH", data[offset + 28 : offset + 34])
            if data[offset + 46 : offset + 46 + n].decode() == name:
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
    for name in (
        "fma_medium/",
        "fma_large/",
        "fma_medium.zip",
        "fma_large.zip",
        "make download",
        "UNPACK=0",
        "--audio-zip",
    ):
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


@pytest.mark.parametrize(
    "damage,said",
    [
        ("crc", "Bad CRC-32"),
        ("bzip2 data", "Invalid data stream"),
        ("local header", "Bad magic number for file header"),
    ],
)
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


# --------------------------------------------------------------------------- the features stage from a zip

SHARD_SIZE = 16


def _run(fma_dir: Path, out: Path, **more):
    """``run_features`` with the test's shard size, 2 workers, no progress bar, and the fine image
    (so that the zip's equality with the tree covers it too)."""
    options = {"jobs": 2, "shard_size": SHARD_SIZE, "progress": False, "fine": RECIPES["fine"], **more}
    return driver.run_features(FeatureOptions(fma_dir, out, **options))


def _failed(out: Path) -> dict[int, str]:
    return {f["track_id"]: f["reason"] for f in read_manifest(out)["failed"]}


JUNK = b"\x00" * 3000  # before the first MP3 frame: libmpg123 skips it, libsndfile's sniffing does not


@pytest.fixture(scope="module")
def tree_and_zip_runs(mini_fma, tmp_path_factory):
    """Shards made from a copy of the mini-FMA's tree and from its zip (no tree), 2 workers each.

    One good track of the copy has junk before its first frame (real files do): it decodes
    from the tree only because its name ends in .mp3 (libsndfile's fallback).
    Returns (root, zip FMA_DIR, tree summary, zip summary, zip log lines, junk track id).
    """
    root = tmp_path_factory.mktemp("zip-features")
    tree_dir = root / "tree-fma"
    shutil.copytree(mini_fma[0], tree_dir)
    junk = min(int(t) for t, e in mini_fma[1]["tracks"].items() if e["kind"] == "good" and e["genre_top"])
    path = tree_dir / "fma_large" / audio_relpath(junk)
    path.write_bytes(JUNK + path.read_bytes())
    zip_dir = zip_only_copy(tree_dir, root / "zip-fma")
    from_tree = _run(tree_dir, root / "tree")
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("preprocess.driver")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        from_zip = _run(zip_dir, root / "zip")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return root, zip_dir, from_tree, from_zip, lines, junk


def test_shards_from_the_zip_equal_shards_from_the_tree(tree_and_zip_runs, mini_fma):
    root, zip_dir, from_tree, from_zip, lines, junk = tree_and_zip_runs
    assert any(f"from the zip {(zip_dir / 'fma_large.zip').absolute()}" in line for line in lines), lines
    tree, zipped = read_manifest(root / "tree"), read_manifest(root / "zip")
    assert [(e["name"], e["checksum"]) for e in zipped["shards"]] == [
        (e["name"], e["checksum"]) for e in tree["shards"]
    ]
    assert zipped["totals"] == tree["totals"] and zipped["skipped"] == tree["skipped"]
    assert from_zip["written"] == from_tree["written"] > 50
    # The same tracks failed for the same reasons; a missing file is named in the zip.
    tree_failed, zip_failed = _failed(root / "tree"), _failed(root / "zip")
    assert set(zip_failed) == set(tree_failed) and len(tree_failed) >= 4
    kinds = {int(t): e["kind"] for t, e in mini_fma[1]["tracks"].items()}
    zip_path = (zip_dir / "fma_large.zip").absolute()
    for tid, reason in tree_failed.items():
        if kinds[tid] == "missing":
            assert zip_failed[tid] == f"missing file: no member fma_large/{audio_relpath(tid)} in {zip_path}"
        else:
            assert zip_failed[tid] == reason, (tid, kinds[tid])
    assert {kinds[t] for t in tree_failed} >= {"missing", "zero_byte", "random_bytes"}
    assert junk not in zip_failed and any(
        junk in read_shard(root / "zip" / e["name"]).track_id for e in zipped["shards"]
    )
    assert verify_shards(root / "zip") == []


def test_damaged_members_fail_their_tracks_and_the_rest_is_unchanged(tree_and_zip_runs, tmp_path):
    root, zip_dir, *_, junk = tree_and_zip_runs
    names = [e["name"] for e in read_manifest(root / "zip")["shards"]]
    reference = read_shard(root / "zip" / names[0])
    crc_bad, gone = [int(t) for t in reference.track_id if t != junk][:2]
    damaged = tmp_path / "fma"
    shutil.copytree(zip_dir / "fma_metadata", damaged / "fma_metadata")
    data = bytearray((zip_dir / "fma_large.zip").read_bytes())
    data[_central_entry(bytes(data), f"fma_large/{audio_relpath(crc_bad)}") + 16] ^= 0xFF  # its CRC-32
    entry = _central_entry(bytes(data), f"fma_large/{audio_relpath(gone)}")
    data[entry + 46 + len(f"fma_large/{audio_relpath(gone)}") - 1] = ord("4")  # renamed to .mp4: gone
    (damaged / "fma_large.zip").write_bytes(bytes(data))
    # Only the first shard (the one holding both tracks): --shard-index 0 of as many tasks as shards.
    summary = _run(damaged, tmp_path / "out", jobs=1, task_index=0, num_tasks=len(names), finalize=False)
    assert [r["name"] for r in summary["computed"]] == [names[0]]
    shard = read_shard(tmp_path / "out" / names[0])
    failed = dict(shard.failed)
    zip_path = (damaged / "fma_large.zip").absolute()
    assert failed[gone] == f"missing file: no member fma_large/{audio_relpath(gone)} in {zip_path}"
    assert failed[crc_bad].startswith(f"bad zip member: fma_large/{audio_relpath(crc_bad)} in {zip_path}: ")
    assert "Bad CRC-32" in failed[crc_bad]
    intact = str((zip_dir / "fma_large.zip").absolute())
    before = {t: r.replace(intact, str(zip_path)) for t, r in reference.failed}
    assert failed == {**before, gone: failed[gone], crc_bad: failed[crc_bad]}
    assert summary["failed"]["bad zip member"] == 1 and summary["failed"]["missing file"] >= 1
    # The shard's other tracks are the intact zip's, image for image.
    keep = ~np.isin(reference.track_id, [gone, crc_bad])
    assert np.array_equal(shard.track_id, reference.track_id[keep])
    with h5py.File(root / "zip" / names[0], "r") as a, h5py.File(tmp_path / "out" / names[0], "r") as b:
        assert np.array_equal(b["mel"][()], a["mel"][()][keep])


def test_damaged_zip_directory_stops_the_run_naming_the_zip(
    tree_and_zip_runs, tmp_path, python, subprocess_env, repo_root
):
    root, zip_dir, *_ = tree_and_zip_runs
    fma_dir = tmp_path / "fma"
    shutil.copytree(zip_dir / "fma_metadata", fma_dir / "fma_metadata")
    data = (zip_dir / "fma_large.zip").read_bytes()
    (fma_dir / "fma_large.zip").write_bytes(data[: len(data) * 2 // 3])  # cut short: no directory
    cmd = [
        python,
        "-m",
        "preprocess",
        "features",
        "--fma-dir",
        str(fma_dir),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--shard-size",
        str(SHARD_SIZE),
        "--recipes",
        "reference,fine",
    ]
    done = subprocess.run(cmd, env=subprocess_env, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert str((fma_dir / "fma_large.zip").absolute()) in done.stderr
    assert "damaged or incomplete" in done.stderr
    assert "Traceback" not in done.stderr and not list((tmp_path / "out").glob("*.h5"))
    # --audio-zip names the zip explicitly (here: the intact one, while FMA_DIR holds the damaged one);
    # one shard is enough to show it is read.
    names = [e["name"] for e in read_manifest(root / "zip")["shards"]]
    one_shard = ["--jobs", "1", "--task-index", "0", "--num-tasks", str(len(names)), "--no-finalize"]
    done = subprocess.run(
        cmd + ["--audio-zip", str(zip_dir / "fma_large.zip"), *one_shard],
        env=subprocess_env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert read_shard(tmp_path / "out" / names[0]).checksum == read_shard(root / "zip" / names[0]).checksum
