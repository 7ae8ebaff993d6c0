"""`python -m preprocess download`: fetch, verify and unpack FMA-like zips from a real local HTTP server.

No test reaches the internet: every zip is generated here (bzip2 members laid out like FMA's, real
MP3s encoded with lameenc) and served by tests/_httpserver.py on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import logging
import math
import socket
import subprocess
import zipfile
from pathlib import Path

import pytest

from preprocess import download as dl
from preprocess.synth.zipped import fma_zip_bytes
from tests._httpserver import FileServer

META = "fma_metadata.zip"
SMALL = "fma_small.zip"

TRACKS_CSV = (
    ",album,track,set,set\n"
    ",title,genre_top,split,subset\n"
    "track_id,,,,\n"
    "2,AWOL - A Way Of Life,Hip-Hop,training,small\n"
    "5,AWOL - A Way Of Life,Hip-Hop,training,small\n"
    '1039,"Quotes, ""and"" commas",Rock,test,small\n'
)
GENRES_CSV = "genre_id,#tracks,parent,title,top_level\n12,32923,0,Rock,12\n21,8389,0,Hip-Hop,21\n"


def _mp3(seconds: float, freq: float) -> bytes:
    """A real mono MP3 of a sine tone (lameenc)."""
    import lameenc

    rate = 22050
    samples = bytearray()
    for i in range(int(seconds * rate)):
        value = int(12000 * math.sin(2 * math.pi * freq * i / rate))
        samples += value.to_bytes(2, "little", signed=True)
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(128)
    encoder.set_in_sample_rate(rate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return bytes(encoder.encode(bytes(samples)) + encoder.flush())


def _zip(members: dict[str, bytes]) -> bytes:
    """A zip with bzip2-compressed members, as FMA's are."""
    return fma_zip_bytes(members)


@pytest.fixture(scope="module")
def members() -> dict[str, dict[str, bytes]]:
    """Zip name -> {member name: bytes}, laid out like FMA's zips."""
    audio = {
        f"fma_small/{tid[:3]}/{tid}.mp3": _mp3(3.0, freq)
        for tid, freq in (("000002", 220.0), ("000005", 330.0), ("001039", 440.0))
    }
    checksums = "".join(
        f"{hashlib.sha1(data).hexdigest()}  {name[len('fma_small/') :]}\n" for name, data in audio.items()
    )
    return {
        META: {
            "fma_metadata/README.txt": b"FMA metadata (test copy)\n",
            "fma_metadata/tracks.csv": TRACKS_CSV.encode(),
            "fma_metadata/genres.csv": GENRES_CSV.encode(),
        },
        SMALL: {
            "fma_small/README.txt": b"fma_small (test copy)\n",
            "fma_small/checksums": checksums.encode(),
            **audio,
        },
    }


@pytest.fixture(scope="module")
def zips(members) -> dict[str, bytes]:
    return {name: _zip(content) for name, content in members.items()}


def _table(zips: dict[str, bytes], **sha1: str) -> list[dl.Archive]:
    """Archives for the served zips with their true sums (or those given as META=..., SMALL=...)."""
    overrides = {META: sha1.get("META"), SMALL: sha1.get("SMALL")}
    return [
        dl.Archive(name, overrides[name] or hashlib.sha1(data).hexdigest(), len(data), 2 * len(data))
        for name, data in zips.items()
    ]


@pytest.fixture
def server(zips):
    with FileServer(zips) as srv:
        yield srv


def _run(fma_dir: Path, server: FileServer, archives, **kwargs) -> list[str]:
    """download() against the test server; returns the lines it logged."""
    kwargs.setdefault("retries", 0)
    kwargs.setdefault("retry_wait", 0.01)
    kwargs.setdefault("timeout", 10)
    lines = _Lines()
    logger = logging.getLogger("preprocess.download")
    logger.addHandler(lines)
    level, logger.level = logger.level, logging.INFO
    try:
        dl.download(fma_dir, "small", base_url=server.url, archives=archives, progress=False, **kwargs)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return lines.messages


class _Lines(logging.Handler):
    """Keeps the messages of the log records it gets."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative posix path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_unpacked(fma_dir: Path, members, name: str) -> None:
    for member, data in members[name].items():
        assert (fma_dir / member).read_bytes() == data, member


def test_normal_run_unpacks_fma_layout_and_checks_sums(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    archives = _table(zips)
    log = _run(fma_dir, server, archives)
    _assert_unpacked(fma_dir, members, META)
    _assert_unpacked(fma_dir, members, SMALL)
    assert any("SHA-1 ok" in line for line in log)
    for archive in archives:
        assert dl.unpacked_marker(fma_dir, archive).is_file()
        assert (fma_dir / archive.name).read_bytes() == zips[archive.name]  # the zip is kept, verified
        assert dl.verified_marker(fma_dir, archive).is_file()
        assert not dl.part_path(fma_dir, archive).exists()
    assert [(r.path, r.range, r.status) for r in server.requests] == [
        ("/" + META, None, 200),
        ("/" + SMALL, None, 200),
    ]
    assert not list(fma_dir.rglob("*.unpacking"))
    # The bzip2 members really are bzip2 (what some unzip tools reject).
    with zipfile.ZipFile(fma_dir / SMALL) as zf:
        assert {info.compress_type for info in zf.infolist()} == {zipfile.ZIP_BZIP2}


def test_second_run_fetches_nothing(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    archives = _table(zips)
    _run(fma_dir, server, archives)
    before = _tree(fma_dir)
    server.requests.clear()
    log = _run(fma_dir, server, archives)
    assert server.requests == []
    assert any("already unpacked" in line for line in log)
    assert _tree(fma_dir) == before
    # Without the unpack marker, the verified zip is unpacked again, still without fetching.
    dl.unpacked_marker(fma_dir, archives[1]).unlink()
    log = _run(fma_dir, server, archives)
    assert server.requests == []
    assert any("already downloaded and verified" in line for line in log)
    assert dl.unpacked_marker(fma_dir, archives[1]).is_file()
    _assert_unpacked(fma_dir, members, SMALL)


def test_transfer_cut_off_halfway_resumes_with_range(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    size = len(zips[SMALL])
    server.cut_once[SMALL] = size // 2
    log = _run(fma_dir, server, _table(zips), retries=3)
    small = server.requests_for(SMALL)
    assert [(r.range, r.status) for r in small] == [(None, 200), (f"bytes={size // 2}-", 206)]
    assert small[0].body_bytes == size // 2
    assert server.body_bytes(SMALL) == size  # resumed, not restarted (1.5x would mean restarted)
    assert any("closed after" in line and "retry 1/3" in line for line in log)
    _assert_unpacked(fma_dir, members, SMALL)


def test_interrupted_run_keeps_part_and_next_run_resumes(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    size = len(zips[SMALL])
    server.cut_once[SMALL] = size // 3
    with pytest.raises(dl.FetchError, match="closed after") as info:
        _run(fma_dir, server, _table(zips), retries=0)
    assert server.url + SMALL in str(info.value)
    assert "rerun to resume" in str(info.value)
    part = fma_dir / (SMALL + ".part")
    assert part.read_bytes() == zips[SMALL][: size // 3]
    assert not (fma_dir / "fma_small").exists() and not (fma_dir / SMALL).exists()
    _run(fma_dir, server, _table(zips))
    assert server.requests_for(SMALL)[-1].range == f"bytes={size // 3}-"
    assert server.body_bytes(SMALL) == size
    assert not part.exists()
    _assert_unpacked(fma_dir, members, SMALL)


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    fma_dir.mkdir()
    size = len(zips[SMALL])
    (fma_dir / (SMALL + ".part")).write_bytes(zips[SMALL][: size // 2])
    server.ignore_range = True
    log = _run(fma_dir, server, _table(zips))
    assert [(r.range, r.status) for r in server.requests_for(SMALL)] == [(f"bytes={size // 2}-", 200)]
    assert any("ignored the Range request" in line for line in log)
    assert (fma_dir / SMALL).read_bytes() == zips[SMALL]  # not the half + the whole
    _assert_unpacked(fma_dir, members, SMALL)


def test_complete_part_file_is_not_fetched_again(tmp_path, server, zips, members):
    """A .part that already holds the whole zip (killed before the rename): the server answers 416."""
    fma_dir = tmp_path / "data"
    fma_dir.mkdir()
    (fma_dir / (SMALL + ".part")).write_bytes(zips[SMALL])
    _run(fma_dir, server, _table(zips))
    assert [(r.status, r.body_bytes) for r in server.requests_for(SMALL)] == [(416, 0)]
    _assert_unpacked(fma_dir, members, SMALL)


def test_wrong_checksum_keeps_bad_zip_aside_and_unpacked_files(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    _run(fma_dir, server, _table(zips))
    # An earlier unpack of fma_small, not marked complete; the zip is to be fetched again.
    archives = _table(zips)
    dl.unpacked_marker(fma_dir, archives[1]).unlink()
    (fma_dir / SMALL).unlink()
    before = _tree(fma_dir)
    corrupt = bytearray(zips[SMALL])
    corrupt[len(corrupt) // 2] ^= 0xFF
    server.files[SMALL] = bytes(corrupt)
    with pytest.raises(dl.ChecksumError) as info:
        _run(fma_dir, server, archives)
    message = str(info.value)
    bad = fma_dir / (SMALL + ".bad")
    assert hashlib.sha1(corrupt).hexdigest() in message and archives[1].sha1 in message
    assert str(bad) in message and "Delete" in message and "--base-url" in message
    assert bad.read_bytes() == bytes(corrupt)
    assert not (fma_dir / SMALL).exists() and not (fma_dir / (SMALL + ".part")).exists()
    after = _tree(fma_dir)
    del after[bad.name]
    assert {k: v for k, v in after.items() if not k.endswith(".verified")} == {
        k: v for k, v in before.items() if not k.endswith(".verified")
    }  # nothing unpacked lost
    assert not dl.unpacked_marker(fma_dir, archives[1]).exists()


def test_existing_zip_with_wrong_checksum_is_moved_aside(tmp_path, server, zips):
    fma_dir = tmp_path / "data"
    fma_dir.mkdir()
    (fma_dir / SMALL).write_bytes(b"not the zip")
    with pytest.raises(dl.ChecksumError, match="kept aside"):
        _run(fma_dir, server, _table(zips))
    assert (fma_dir / (SMALL + ".bad")).read_bytes() == b"not the zip"
    assert not (fma_dir / "fma_small").exists()
    assert server.requests_for(SMALL) == []


@pytest.mark.parametrize(
    "evil", ["../outside.mp3", "fma_small/../../outside.mp3", "/tmp/outside.mp3", "C:/outside.mp3"]
)
def test_zip_slip_member_is_refused_before_writing(tmp_path, server, zips, members, evil):
    fma_dir = tmp_path / "deep" / "data"
    slip = _zip({"fma_small/000/000002.mp3": members[SMALL]["fma_small/000/000002.mp3"], evil: b"evil"})
    server.files[SMALL] = slip
    archives = _table({**zips, SMALL: slip})
    with pytest.raises(dl.ArchiveError, match="zip slip") as info:
        _run(fma_dir, server, archives)
    assert repr(evil) in str(info.value)
    assert not (fma_dir / "fma_small").exists()  # not even the good member came first
    assert not (tmp_path / "deep" / "outside.mp3").exists() and not (tmp_path / "outside.mp3").exists()
    assert not dl.unpacked_marker(fma_dir, archives[1]).exists()
    assert dl.unpacked_marker(fma_dir, archives[0]).exists()  # the metadata zip was fine


@pytest.mark.parametrize("status,retried", [(404, False), (500, True)])
def test_http_error_names_the_url(tmp_path, server, zips, status, retried):
    server.status[SMALL] = status
    with pytest.raises(dl.FetchError) as info:
        _run(tmp_path / "data", server, _table(zips), retries=2)
    message = str(info.value)
    assert f"HTTP {status}" in message and server.url + SMALL in message
    assert len(server.requests_for(SMALL)) == (3 if retried else 1)
    assert not (tmp_path / "data" / "fma_small").exists()


def test_connection_refused_names_the_url(tmp_path, zips):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(dl.FetchError, match="cannot connect") as info:
        dl.download(
            tmp_path / "data",
            "small",
            base_url=url,
            archives=_table(zips),
            retries=1,
            retry_wait=0.01,
            progress=False,
        )
    assert url + META in str(info.value)


def test_interrupted_unpack_is_finished_by_a_rerun(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    archives = _table(zips)
    _run(fma_dir, server, archives)
    # Simulate an unpack interrupted and damaged: marker gone, one file missing, one truncated,
    # a stale temporary file left behind.
    small = archives[1]
    dl.unpacked_marker(fma_dir, small).unlink()
    (fma_dir / "fma_small/000/000005.mp3").unlink()
    with open(fma_dir / "fma_small/001/001039.mp3", "r+b") as fh:
        fh.truncate(100)
    damaged = bytearray((fma_dir / "fma_small/checksums").read_bytes())  # same size, other bytes
    damaged[0] ^= 0xFF
    (fma_dir / "fma_small/checksums").write_bytes(bytes(damaged))
    stale = fma_dir / "fma_small/000/.000005.mp3.unpacking"
    stale.write_bytes(b"half")
    kept_before = (fma_dir / "fma_small/000/000002.mp3").stat().st_mtime_ns
    server.requests.clear()
    log = _run(fma_dir, server, archives)
    assert server.requests == []
    _assert_unpacked(fma_dir, members, SMALL)
    assert not stale.exists()
    assert (fma_dir / "fma_small/000/000002.mp3").stat().st_mtime_ns == kept_before  # not rewritten
    assert any("already unpacked by an earlier run" in line for line in log)
    assert dl.unpacked_marker(fma_dir, small).is_file()


def test_corrupt_member_in_a_matching_zip_is_reported(tmp_path, server, members):
    """A zip whose sums match but whose member is damaged: clear error, no marker, no partial file."""
    good = _zip(members[SMALL])
    with zipfile.ZipFile(io.BytesIO(good)) as zf:
        info = zf.getinfo("fma_small/001/001039.mp3")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    broken = bytearray(good)
    broken[start + info.compress_size // 2] ^= 0xFF
    server.files[SMALL] = bytes(broken)
    archives = _table({META: server.files[META], SMALL: bytes(broken)})
    fma_dir = tmp_path / "data"
    with pytest.raises(dl.ArchiveError, match="001039.mp3 is corrupt"):
        _run(fma_dir, server, archives)
    assert not (fma_dir / "fma_small/001/001039.mp3").exists()
    assert not list(fma_dir.rglob("*.unpacking"))
    assert (fma_dir / "fma_small/000/000002.mp3").read_bytes() == members[SMALL]["fma_small/000/000002.mp3"]
    assert not dl.unpacked_marker(fma_dir, archives[1]).exists()


def test_not_enough_disk_space_is_refused_with_the_amounts(tmp_path, server, zips):
    archives = _table(zips)
    fma_dir = tmp_path / "data"
    need = sum(2 * len(z) + len(z) for z in zips.values())  # zip + unpacked (2x in this table)
    assert dl.space_needed(fma_dir, archives)[0] == need
    with pytest.raises(dl.DiskSpaceError) as info:
        _run(fma_dir, server, archives, reserve_bytes=0, free_bytes=lambda path: need - 1)
    message = str(info.value)
    assert str(fma_dir) in message and "needs ~" in message and "free" in message
    assert server.requests == [] and not fma_dir.exists()
    _run(fma_dir, server, archives, reserve_bytes=0, free_bytes=lambda path: need)  # just enough
    assert dl.space_needed(fma_dir, archives)[0] == 0  # all done: nothing more needed


def test_partial_download_lowers_the_space_needed(tmp_path, zips):
    archives = _table(zips)
    fma_dir = tmp_path / "data"
    fma_dir.mkdir()
    full = dl.space_needed(fma_dir, archives)[0]
    (fma_dir / (SMALL + ".part")).write_bytes(zips[SMALL][:1000])
    assert dl.space_needed(fma_dir, archives)[0] == full - 1000
    peak = dl.space_needed(fma_dir, archives, remove_zip=True)[0]
    assert peak == sum(a.unpacked_bytes for a in archives) + max(len(zips[META]), len(zips[SMALL]) - 1000)


def test_a_second_download_in_the_same_folder_is_refused(tmp_path, server, zips):
    fma_dir = tmp_path / "data"
    fma_dir.mkdir()
    with open(fma_dir / ".download.lock", "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(dl.DownloadError, match="another download is running"):
            _run(fma_dir, server, _table(zips))
    assert server.requests == []


def test_sums_file_is_parsed_and_bad_lines_are_named(tmp_path):
    sums = tmp_path / "sums.txt"
    sums.write_text(f"# mirror\n{'a' * 40}  fma_metadata.zip\n{'B' * 40} *dir/fma_small.zip\n")
    assert dl.read_sums(sums) == {META: "a" * 40, SMALL: "b" * 40}
    archives = dl.with_sums(dl.archives_for("small"), dl.read_sums(sums), str(sums))
    assert [a.sha1 for a in archives] == ["a" * 40, "b" * 40]
    with pytest.raises(dl.DownloadError, match="has no SHA-1 for fma_large.zip"):
        dl.with_sums(dl.archives_for("large"), dl.read_sums(sums), str(sums))
    sums.write_text(f"{'a' * 40}  fma_metadata.zip\nnot a sum\n")
    with pytest.raises(dl.DownloadError, match=r"sums.txt:2: expected"):
        dl.read_sums(sums)


def test_published_table_matches_fma_facts():
    assert [a.name for a in dl.archives_for("large")] == [META, "fma_large.zip"]
    assert dl.ARCHIVES["large"].sha1 == "497109f4dd721066b5ce5e5f250ec604dc78939e"
    assert dl.ARCHIVES["small"].folder == "fma_small"
    assert (
        dl.archive_url(dl.DEFAULT_BASE_URL, dl.ARCHIVES["metadata"])
        == "https://os.unil.cloud.switch.ch/fma/fma_metadata.zip"
    )


def _download_command(tmp_path, server, zips, python, subprocess_env, *extra):
    """``python -m preprocess download`` of the small subset from the test server, with a sums file.

    Returns (fma_dir, sums file, environment, command).
    """
    sums = tmp_path / "sums.txt"
    sums.write_text("".join(f"{hashlib.sha1(data).hexdigest()}  {name}\n" for name, data in zips.items()))
    fma_dir = tmp_path / "data"
    env = {**subprocess_env, dl.BASE_URL_ENV: server.url}
    cmd = [python, "-m", "preprocess", "download", "--fma-dir", str(fma_dir), "--subset", "small"]
    return fma_dir, sums, env, [*cmd, "--sums", str(sums), "--reserve", "0", *extra]


def test_cli_downloads_with_env_base_url_and_sums_file(
    tmp_path, server, zips, members, python, subprocess_env, repo_root
):
    fma_dir, sums, env, cmd = _download_command(tmp_path, server, zips, python, subprocess_env)
    done = subprocess.run(cmd, env=env, cwd=repo_root, capture_output=True, text=True, timeout=60)
    # The disk check uses FMA's published sizes (7.5 GiB for small); skip it where the disk is small.
    if "not enough free disk space" in done.stderr:
        done = subprocess.run(
            cmd + ["--no-space-check"], env=env, cwd=repo_root, capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert "done:" in done.stdout
    _assert_unpacked(fma_dir, members, SMALL)
    _assert_unpacked(fma_dir, members, META)
    # A refusal exits 2 with the reason on stderr; --reserve asks for more than any disk has.
    other = tmp_path / "other"
    refused = subprocess.run(
        cmd[:4] + ["--fma-dir", str(other), "--subset", "small", "--sums", str(sums), "--reserve", "1e9"],
        env=env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "not enough free disk space" in refused.stderr and "--reserve" in refused.stderr
    assert not other.exists()


def test_cli_help_explains():
    parser = __import__("argparse").ArgumentParser()
    dl.add_arguments(parser)
    text = parser.format_help()
    for option in (
        "--fma-dir",
        "--subset",
        "--base-url",
        "--sums",
        "--retries",
        "--reserve",
        "--no-space-check",
        "--remove-zip",
    ):
        assert option in text
    assert "Range" in dl.__doc__ and "bzip2" in dl.__doc__


def test_remove_zip_deletes_zips_once_unpacked_and_rerun_still_fetches_nothing(
    tmp_path, server, zips, members
):
    fma_dir = tmp_path / "data"
    archives = _table(zips)
    _run(fma_dir, server, archives, remove_zip=True)
    _assert_unpacked(fma_dir, members, META)
    _assert_unpacked(fma_dir, members, SMALL)
    assert not list(fma_dir.glob("*.zip*"))
    server.requests.clear()
    _run(fma_dir, server, archives, remove_zip=True)
    assert server.requests == []


def test_parallel_unpack_equals_sequential_and_resumes(tmp_path, server, zips, members, monkeypatch):
    """Batches of members decompressed by a process pool give the same tree as one process."""
    monkeypatch.setattr(dl, "BATCH_MEMBERS", 2)  # several batches even for this small zip
    archives = _table(zips)
    sequential, parallel = tmp_path / "seq", tmp_path / "par"
    _run(sequential, server, archives, jobs=1)
    log = _run(parallel, server, archives, jobs=2)
    assert any("with 2 processes" in line for line in log)
    assert _tree(parallel / "fma_small") == _tree(sequential / "fma_small")
    assert _tree(parallel / "fma_metadata") == _tree(sequential / "fma_metadata")
    # An interrupted parallel unpack (marker gone, one file lost) is finished by a rerun.
    dl.unpacked_marker(parallel, archives[1]).unlink()
    (parallel / "fma_small/001/001039.mp3").unlink()
    server.requests.clear()
    log = _run(parallel, server, archives, jobs=2)
    assert server.requests == []
    _assert_unpacked(parallel, members, SMALL)
    assert any("already unpacked by an earlier run" in line for line in log)
    assert dl.unpacked_marker(parallel, archives[1]).is_file()


def test_no_unpack_keeps_the_verified_audio_zip_and_needs_only_its_size(tmp_path, server, zips, members):
    fma_dir = tmp_path / "data"
    archives = _table(zips)  # unpacked size = 2x the zip in this table
    meta, small = (len(zips[META]), len(zips[SMALL]))
    need = dl.space_needed(fma_dir, archives, unpack_audio=False)[0]
    assert need == meta + 2 * meta + small  # the metadata is unpacked, the audio zip is not
    assert dl.space_needed(fma_dir, archives)[0] == need + 2 * small
    with pytest.raises(dl.DiskSpaceError, match="fma_small.zip: fetch .* \\(kept as a zip\\)"):
        _run(fma_dir, server, archives, unpack_audio=False, reserve_bytes=0, free_bytes=lambda p: need - 1)
    log = _run(fma_dir, server, archives, unpack_audio=False, reserve_bytes=0, free_bytes=lambda p: need)
    _assert_unpacked(fma_dir, members, META)
    assert (fma_dir / SMALL).read_bytes() == zips[SMALL]
    assert dl.verified_marker(fma_dir, archives[1]).is_file()
    assert not (fma_dir / "fma_small").exists() and not dl.unpacked_marker(fma_dir, archives[1]).exists()
    assert any("kept as a zip" in line for line in log)
    # A rerun fetches nothing and needs no more space; a later run without --no-unpack unpacks the zip.
    server.requests.clear()
    _run(fma_dir, server, archives, unpack_audio=False)
    assert server.requests == [] and dl.space_needed(fma_dir, archives, unpack_audio=False)[0] == 0
    _run(fma_dir, server, archives)
    assert server.requests == []
    _assert_unpacked(fma_dir, members, SMALL)


def test_no_unpack_with_remove_zip_is_refused(tmp_path, server, zips):
    with pytest.raises(dl.DownloadError, match="--remove-zip with --no-unpack"):
        _run(tmp_path / "data", server, _table(zips), unpack_audio=False, remove_zip=True)
    assert server.requests == [] and not (tmp_path / "data").exists()


def test_cli_no_unpack_and_make_variable(tmp_path, server, zips, members, python, subprocess_env, repo_root):
    fma_dir, _, env, cmd = _download_command(
        tmp_path, server, zips, python, subprocess_env, "--no-unpack", "--no-space-check"
    )
    done = subprocess.run(cmd, env=env, cwd=repo_root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "fma_small.zip" in done.stdout.splitlines()[-1] and "make features" in done.stdout
    assert (fma_dir / SMALL).read_bytes() == zips[SMALL] and not (fma_dir / "fma_small").exists()
    _assert_unpacked(fma_dir, members, META)
    # `make download UNPACK=0` passes --no-unpack (dry run: prints the command only).
    made = subprocess.run(
        ["make", "-n", "-o", ".venv/.setup-stamp", "download", "UNPACK=0"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert "--no-unpack" in made.stdout
    made = subprocess.run(
        ["make", "-n", "-o", ".venv/.setup-stamp", "download"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "--no-unpack" not in made.stdout
