"""Fetch, check and unpack FMA's zips into FMA_DIR (`make download`).

Downloads fma_metadata.zip and fma_<SUBSET>.zip from FMA's server (or a mirror:
--base-url, or the FMA_BASE_URL environment variable), checks each zip's SHA-1
against the sums FMA publishes, and unpacks it into FMA_DIR as FMA lays it out:

    FMA_DIR/fma_metadata/tracks.csv, genres.csv, ...
    FMA_DIR/fma_<SUBSET>/NNN/NNNNNN.mp3

Safe to interrupt and rerun:
  - a partial download is kept as FMA_DIR/fma_<SUBSET>.zip.part and resumed with an
    HTTP Range request (if the server ignores Range, it starts over cleanly);
  - transient errors (dropped connection, HTTP 5xx) are retried with backoff;
  - a zip whose SHA-1 checked out is recorded in fma_<SUBSET>.zip.verified and is
    not fetched or hashed again;
  - members are unpacked to temporary names and renamed; the marker
    fma_<SUBSET>/.unpacked-<sha1> is written last, so an interrupted unpack never
    looks complete, and a rerun finishes it without rewriting finished files.

With --no-unpack (make download UNPACK=0) the audio zip is fetched, verified and kept
as it is, FMA_DIR/fma_<SUBSET>.zip: the features stage reads the tracks it needs
straight from it, so the disk holds the zip only and nothing is unpacked. The
metadata zip is unpacked either way.

A zip whose SHA-1 is wrong is moved aside to fma_<SUBSET>.zip.bad; nothing already
unpacked is touched. A zip member with an absolute path or '..' is refused before
anything is written. The free disk space is checked first (zip + unpacked size; the
zip's size alone for an audio zip kept with --no-unpack).

Sizes (zip; unpacked about the same for audio): metadata 342 MiB, small 7.2 GiB,
medium 22 GiB, large 93 GiB. The zips use bzip2 inside; Python reads it, some
unzip tools don't.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Iterable, Iterator

import joblib
from tqdm import tqdm

from shards import atomic_write_text
from shards.cli import progress_disabled
from shards.errors import FmaGenreError

DEFAULT_BASE_URL = "https://os.unil.cloud.switch.ch/fma/"
BASE_URL_ENV = "FMA_BASE_URL"
USER_AGENT = "fma-genre-download/0.1 (python urllib)"
CHUNK_BYTES = 1 << 20
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Archive:
    """One of FMA's zips.

    Parameters
    ----------
    name : str
        File name on the server, e.g. ``'fma_small.zip'``.
    sha1 : str
        Expected SHA-1 of the whole zip (hex, lower case).
    zip_bytes : int
        Size of the zip, for the disk-space check (FMA's published size, rounded).
    unpacked_bytes : int
        Estimated size of the unpacked tree, for the disk-space check.
    """

    name: str
    sha1: str
    zip_bytes: int
    unpacked_bytes: int

    @property
    def folder(self) -> str:
        """The top folder the zip unpacks into, e.g. ``'fma_small'``."""
        return self.name[: -len(".zip")] if self.name.endswith(".zip") else self.name

    @property
    def is_audio(self) -> bool:
        """True for a subset's audio zip, False for the metadata zip (always unpacked)."""
        return self.folder != "fma_metadata"


# Sums from FMA's README (see docs/fma.md). MP3s do not shrink under bzip2, so an audio
# tree unpacks to about its zip's size (+3 % margin); the CSVs of the metadata zip do shrink,
# so its unpacked size is a generous estimate (8x).
ARCHIVES = {
    "metadata": Archive(
        "fma_metadata.zip", "f0df49ffe5f2a6008d7dc83c6915b31835dfe733", 342 * MiB, 8 * 342 * MiB
    ),
    "small": Archive(
        "fma_small.zip", "ade154f733639d52e35e32f5593efe5be76c6d70", int(7.2 * GiB), int(7.2 * 1.03 * GiB)
    ),
    "medium": Archive(
        "fma_medium.zip", "c67b69ea232021025fca9231fc1c7c1a063ab50b", 22 * GiB, int(22 * 1.03 * GiB)
    ),
    "large": Archive(
        "fma_large.zip", "497109f4dd721066b5ce5e5f250ec604dc78939e", 93 * GiB, int(93 * 1.03 * GiB)
    ),
}
SUBSETS = ("small", "medium", "large")


log = logging.getLogger(__name__)


class DownloadError(FmaGenreError):
    """Base class: a download, check or unpack that could not be completed."""


class FetchError(DownloadError):
    """The server could not be reached or answered with an error."""


class ChecksumError(DownloadError, ValueError):
    """A zip's SHA-1 differs from the expected one."""


class ArchiveError(DownloadError, ValueError):
    """A zip that is unsafe (zip slip) or unreadable."""


class DiskSpaceError(DownloadError):
    """Not enough free disk space for the download and its unpacked tree."""


class _Transient(Exception):
    """A failure worth retrying (dropped connection, HTTP 5xx)."""


# --------------------------------------------------------------------------- archives and sums


def archives_for(subset: str) -> list[Archive]:
    """The zips ``make download SUBSET=subset`` needs: metadata, then the audio of ``subset``."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    return [ARCHIVES["metadata"], ARCHIVES[subset]]


def read_sums(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``sha1sum``-style file: lines ``<40 hex digits>  <zip name>`` (``#`` comments allowed).

    Returns ``{zip name: sha1}``. Raises DownloadError naming the file and line on a bad line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DownloadError(f"{path}: cannot read the sums file ({exc.strerror})") from exc
    sums = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{40})\s+\*?(\S+)", line)
        if match is None:
            raise DownloadError(
                f"{path}:{number}: expected '<sha1>  <zip name>' (sha1sum format), got {line!r}"
            )
        sums[Path(match.group(2)).name] = match.group(1).lower()
    return sums


def with_sums(archives: Iterable[Archive], sums: dict[str, str], source: str) -> list[Archive]:
    """``archives`` with their SHA-1 replaced by ``sums`` (every archive must have one)."""
    out = []
    for archive in archives:
        if archive.name not in sums:
            raise DownloadError(
                f"{source} has no SHA-1 for {archive.name}; add a line '<sha1>  {archive.name}'"
            )
        out.append(replace(archive, sha1=sums[archive.name]))
    return out


def archive_url(base_url: str, archive: Archive) -> str:
    """Base URL + zip name (one slash between them)."""
    return base_url.rstrip("/") + "/" + archive.name


# --------------------------------------------------------------------------- paths and markers


def zip_path(fma_dir: Path, archive: Archive) -> Path:
    return fma_dir / archive.name


def part_path(fma_dir: Path, archive: Archive) -> Path:
    return fma_dir / (archive.name + ".part")


def bad_path(fma_dir: Path, archive: Archive) -> Path:
    return fma_dir / (archive.name + ".bad")


def verified_marker(fma_dir: Path, archive: Archive) -> Path:
    return fma_dir / (archive.name + ".verified")


def unpacked_marker(fma_dir: Path, archive: Archive) -> Path:
    return fma_dir / archive.folder / f".unpacked-{archive.sha1}"


def is_unpacked(fma_dir: Path, archive: Archive) -> bool:
    return unpacked_marker(fma_dir, archive).is_file()


def _zip_is_marked_verified(fma_dir: Path, archive: Archive) -> bool:
    """True when the ``.verified`` marker matches the zip on disk (same sha1, size and mtime)."""
    path, marker = zip_path(fma_dir, archive), verified_marker(fma_dir, archive)
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("sha1") == archive.sha1
        and record.get("bytes") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
    )


def _mark_verified(fma_dir: Path, archive: Archive) -> None:
    stat = zip_path(fma_dir, archive).stat()
    record = {"zip": archive.name, "sha1": archive.sha1, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    atomic_write_text(verified_marker(fma_dir, archive), json.dumps(record, indent=1) + "\n")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _human(n_bytes: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    if abs(n_bytes) < 1024:
        return f"{n_bytes:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n_bytes /= 1024
        if abs(n_bytes) < 1024:
            return f"{n_bytes:.1f} {unit}"
    return f"{n_bytes / 1024:.1f} TiB"


# --------------------------------------------------------------------------- disk space


def disk_free(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class SpaceNeed:
    """Bytes one archive still needs: to fetch (zip) and to unpack (tree)."""

    archive: Archive
    fetch_bytes: int
    unpack_bytes: int


def space_needed(
    fma_dir: Path, archives: Iterable[Archive], remove_zip: bool = False, unpack_audio: bool = True
) -> tuple[int, list]:
    """How many bytes the remaining work needs at its peak, and the per-archive breakdown.

    An unpacked archive needs nothing; a verified zip needs only its unpacked size; a
    partial download needs the rest of its zip. With ``remove_zip`` each zip is deleted
    after unpacking, so the peak is every unpacked tree plus the largest zip. Without
    ``unpack_audio`` an audio zip needs only its own size (it is kept, not unpacked).
    """
    needs = []
    for archive in archives:
        if is_unpacked(fma_dir, archive):
            needs.append(SpaceNeed(archive, 0, 0))
            continue
        if zip_path(fma_dir, archive).is_file():
            fetch = 0
        else:
            fetch = max(archive.zip_bytes - _size(part_path(fma_dir, archive)), 0)
        unpacked = archive.unpacked_bytes if unpack_audio or not archive.is_audio else 0
        needs.append(SpaceNeed(archive, fetch, unpacked))
    unpack_total = sum(n.unpack_bytes for n in needs)
    if remove_zip:
        total = unpack_total + max((n.fetch_bytes for n in needs), default=0)
    else:
        total = unpack_total + sum(n.fetch_bytes for n in needs)
    return total, needs


def check_space(
    fma_dir: Path,
    archives: list[Archive],
    *,
    reserve_bytes: int,
    remove_zip: bool,
    unpack_audio: bool = True,
    free_bytes: Callable[[Path], int] = disk_free,
) -> None:
    """Say how much space is needed; raise DiskSpaceError if ``fma_dir``'s disk lacks it."""
    total, needs = space_needed(fma_dir, archives, remove_zip, unpack_audio)
    free = free_bytes(fma_dir)
    parts = [
        f"{n.archive.name}: fetch {_human(n.fetch_bytes)}"
        + (f" + unpack ~{_human(n.unpack_bytes)}" if n.unpack_bytes else " (kept as a zip)")
        for n in needs
        if n.fetch_bytes or n.unpack_bytes
    ]
    if total == 0:
        return
    log.info(
        f"disk: need ~{_human(total)} in {fma_dir} ({'; '.join(parts)}), "
        f"keep {_human(reserve_bytes)} spare; {_human(free)} free"
    )
    if total + reserve_bytes > free:
        raise DiskSpaceError(
            f"not enough free disk space in {fma_dir}: the download needs ~{_human(total)} "
            f"({'; '.join(parts)}) plus {_human(reserve_bytes)} spare (--reserve), but only "
            f"{_human(free)} is free. Free some space or choose a folder on a bigger disk "
            f"(make download FMA_DIR=/big/disk/fma); --no-unpack keeps the audio as a zip, which "
            f"the features stage reads directly (about half the space); --remove-zip deletes each "
            f"zip once unpacked; --no-space-check skips this check."
        )


# --------------------------------------------------------------------------- fetching


class _Hasher:
    """SHA-1 of the ``.part`` file's first ``n_bytes`` bytes, kept in step with the file."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sha1 = hashlib.sha1()
        self.n_bytes = 0

    def catch_up(self, path: Path, size: int, progress: bool) -> None:
        """Hash the file from where we are up to ``size`` (restart if the file was cut shorter)."""
        if size < self.n_bytes:
            self.reset()
        if size == self.n_bytes:
            return
        with (
            open(path, "rb") as fh,
            tqdm(
                total=size,
                initial=self.n_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"hashing {path.name}",
                disable=not progress,
            ) as bar,
        ):
            fh.seek(self.n_bytes)
            while self.n_bytes < size:
                chunk = fh.read(min(CHUNK_BYTES, size - self.n_bytes))
                if not chunk:
                    raise DownloadError(f"{path} shrank while being read; rerun the command")
                self.update(chunk)
                bar.update(len(chunk))

    def update(self, chunk: bytes) -> None:
        self.sha1.update(chunk)
        self.n_bytes += len(chunk)


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into (START, TOTAL); None where absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if match is None:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _http_error_message(url: str, exc: urllib.error.HTTPError) -> str:
    return f"HTTP {exc.code} {exc.reason} from {url}"


def _fetch_once(url: str, part: Path, hasher: _Hasher, *, timeout: float, progress: bool) -> None:
    """One GET of ``url`` into ``part``, resuming from its current size. Raises _Transient to retry."""
    offset = _size(part)
    hasher.catch_up(part, offset, progress)
    response = _open_url(url, part, offset, hasher, timeout)
    if response is None:
        return  # the .part already holds the whole file
    with response:
        offset, total = _resume_point(url, part, offset, response, hasher)
        received = _receive(url, part, offset, total, response, hasher, progress)
    if total is not None and received < total:
        raise _Transient(f"connection to {url} closed after {received} of {total} bytes")
    if total is not None and received > total:
        raise FetchError(
            f"{url}: received {received} bytes, more than the {total} announced; delete {part} and rerun"
        )


def _open_url(url: str, part: Path, offset: int, hasher: _Hasher, timeout: float):
    """The response to a GET of ``url`` from byte ``offset``; None if ``part`` is already whole."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code == 416 and offset:
                _, total = _content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    return None
                log.info(
                    f"{url}: the server has no bytes past {offset} of {part.name} "
                    f"(it reports {total} bytes in all); starting over"
                )
                part.unlink()
                hasher.reset()
                raise _Transient("partial download did not match the server's file") from exc
            if exc.code >= 500 or exc.code in (408, 429):
                raise _Transient(_http_error_message(url, exc)) from exc
            raise FetchError(
                f"{_http_error_message(url, exc)}. Check the address: the base URL is "
                f"{url.rsplit('/', 1)[0]}/ (set it with --base-url or {BASE_URL_ENV}; FMA's is "
                f"{DEFAULT_BASE_URL})."
            ) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(f"cannot connect to {url}: {reason}") from exc


def _resume_point(url: str, part: Path, offset: int, response, hasher: _Hasher) -> tuple[int, int | None]:
    """Where the response's body starts in the file (``offset``, or 0 if the server sent it all)
    and the file's total size (None if unknown)."""
    status = response.status
    if status == 206:
        start, total = _content_range(response.headers.get("Content-Range"))
        if start != offset:
            raise FetchError(
                f"{url}: asked for bytes from {offset}, the server sent "
                f"Content-Range {response.headers.get('Content-Range')!r}; delete "
                f"{part} and rerun, or use another mirror"
            )
        return offset, total
    if status == 200:
        if offset:
            log.info(f"{url}: the server ignored the Range request (HTTP 200); starting over")
        hasher.reset()
        length = response.headers.get("Content-Length")
        return 0, int(length) if length is not None and length.isdigit() else None
    raise FetchError(f"unexpected HTTP {status} from {url}")


def _receive(
    url: str, part: Path, offset: int, total: int | None, response, hasher: _Hasher, progress: bool
) -> int:
    """Append the response's body to ``part`` from ``offset`` (durably); returns the bytes in ``part``."""
    received = offset
    with (
        open(part, "ab" if offset else "wb") as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name[: -len(".part")],
            disable=not progress,
        ) as bar,
    ):
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as exc:
                out.flush()
                raise _Transient(f"connection to {url} broke after {received} bytes: {exc}") from exc
            if not chunk:
                break
            out.write(chunk)
            hasher.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    return received


def fetch(
    url: str, part: Path, *, retries: int, retry_wait: float, timeout: float = 60.0, progress: bool = True
) -> str:
    """Download ``url`` into ``part`` (resuming what it holds) and return the file's SHA-1.

    Transient failures are retried up to ``retries`` times in a row without progress,
    waiting ``retry_wait`` seconds, doubling each time (at most 60 s). The ``.part``
    file is kept on failure, so a rerun resumes.
    """
    hasher = _Hasher()
    failures = 0
    while True:
        size_before = _size(part)
        try:
            _fetch_once(url, part, hasher, timeout=timeout, progress=progress)
        except _Transient as exc:
            failures = 1 if _size(part) > size_before else failures + 1
            if failures > retries:
                kept = _size(part)
                hint = (
                    f"; {part} keeps the {kept} bytes received, rerun to resume"
                    if kept
                    else "; rerun when the server is reachable"
                )
                raise FetchError(f"{exc} (gave up after {retries} retries){hint}") from exc
            wait = min(retry_wait * 2 ** (failures - 1), 60.0)
            log.info(f"{exc}; retry {failures}/{retries} in {wait:.1f} s")
            time.sleep(wait)
            continue
        hasher.catch_up(part, _size(part), progress)
        return hasher.sha1.hexdigest()


def sha1_of_file(path: Path, progress: bool = True) -> str:
    """SHA-1 (hex) of a whole file, with a progress bar."""
    hasher = _Hasher()
    hasher.catch_up(path, _size(path), progress)
    return hasher.sha1.hexdigest()


def _checksum_error(fma_dir: Path, archive: Archive, url: str, got: str, bad: Path) -> ChecksumError:
    return ChecksumError(
        f"{archive.name}: SHA-1 is {got}, expected {archive.sha1}. The file is kept aside as {bad}; "
        f"nothing was unpacked from it and nothing already in {fma_dir} was changed. "
        f"Delete {bad} and rerun to download it again. If the sum is wrong again, the server "
        f"({url}) serves a different file: try another mirror (--base-url) or, for a mirror with "
        f"its own zips, give their sums with --sums."
    )


def obtain_zip(
    fma_dir: Path,
    archive: Archive,
    base_url: str,
    *,
    retries: int,
    retry_wait: float,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Make sure ``fma_dir/<zip>`` exists and has the expected SHA-1; download it if needed."""
    final = zip_path(fma_dir, archive)
    url = archive_url(base_url, archive)
    if final.is_file():
        if _zip_is_marked_verified(fma_dir, archive):
            log.info(f"{archive.name}: already downloaded and verified")
            return final
        log.info(f"{archive.name}: found, checking its SHA-1")
        got = sha1_of_file(final, progress)
        if got != archive.sha1:
            bad = bad_path(fma_dir, archive)
            os.replace(final, bad)
            verified_marker(fma_dir, archive).unlink(missing_ok=True)
            raise _checksum_error(fma_dir, archive, url, got, bad)
        _mark_verified(fma_dir, archive)
        return final

    part = part_path(fma_dir, archive)
    if _size(part):
        log.info(f"{archive.name}: resuming {url} from byte {_size(part)}")
    else:
        log.info(f"{archive.name}: downloading {url}")
    got = fetch(url, part, retries=retries, retry_wait=retry_wait, timeout=timeout, progress=progress)
    if got != archive.sha1:
        bad = bad_path(fma_dir, archive)
        os.replace(part, bad)
        raise _checksum_error(fma_dir, archive, url, got, bad)
    os.replace(part, final)
    _mark_verified(fma_dir, archive)
    log.info(f"{archive.name}: SHA-1 ok ({archive.sha1})")
    return final


# --------------------------------------------------------------------------- unpacking


def member_target(fma_dir: Path, name: str, source: Path) -> Path:
    """Where zip member ``name`` goes under ``fma_dir``; ArchiveError for an unsafe name (zip slip)."""
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    unsafe = (
        not name
        or "\x00" in name
        or posix.is_absolute()
        or windows.drive
        or windows.root
        or ".." in posix.parts
        or ".." in windows.parts
    )
    target = fma_dir.joinpath(*[p for p in posix.parts if p not in ("", ".")])
    inside = os.path.normpath(os.path.abspath(target)).startswith(os.path.abspath(fma_dir) + os.sep)
    if unsafe or not inside:
        raise ArchiveError(
            f"{source}: member {name!r} has an absolute path or '..' and would be written outside "
            f"{fma_dir} (zip slip); refusing to unpack anything from this zip. FMA's zips hold "
            f"only relative paths, so this zip is not FMA's: delete {source} and download it from "
            f"FMA's server ({DEFAULT_BASE_URL})."
        )
    return target


def _crc_of_file(path: Path) -> int:
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def _already_unpacked(target: Path, info: zipfile.ZipInfo) -> bool:
    """A file left by an earlier (interrupted) unpack that equals the member: same size and CRC-32."""
    try:
        if not target.is_file() or target.stat().st_size != info.file_size:
            return False
        return _crc_of_file(target) == info.CRC
    except OSError:
        return False


def _temp_target(target: Path) -> Path:
    return target.with_name(f".{target.name}.unpacking")


def safe_members(zf: zipfile.ZipFile, fma_dir: Path, source: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Every (member, target path); raises ArchiveError if any member is unsafe, before any write."""
    return [(info, member_target(fma_dir, info.filename, source)) for info in zf.infolist()]


# Members are unpacked in batches of about this many bytes (or members), one batch per pool
# task: few enough tasks that a worker's start-up is nothing, enough to keep every core busy.
BATCH_BYTES = 256 * MiB
BATCH_MEMBERS = 2048


def _batches(members: list[tuple[zipfile.ZipInfo, Path]]) -> list[list[zipfile.ZipInfo]]:
    """Consecutive runs of members (zip order: sequential reads) of ~BATCH_BYTES each."""
    batches: list[list[zipfile.ZipInfo]] = [[]]
    size = 0
    for info, _ in members:
        if batches[-1] and (size >= BATCH_BYTES or len(batches[-1]) >= BATCH_MEMBERS):
            batches.append([])
            size = 0
        batches[-1].append(info)
        size += info.compress_size
    return [b for b in batches if b]


def _unpack_batch(zf: zipfile.ZipFile, fma_dir: Path, source: Path, names: list[str]) -> tuple[int, int]:
    """Write the named members of ``zf`` under ``fma_dir``; return (bytes done, members kept).

    Each file goes to a hidden temporary name and is renamed when whole; a file that
    an earlier, interrupted unpack finished (same size and CRC-32) is kept.
    """
    done = kept = 0
    for name in names:
        info = zf.getinfo(name)
        target = member_target(fma_dir, name, source)
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        temp = _temp_target(target)
        if _already_unpacked(target, info):
            temp.unlink(missing_ok=True)
            kept += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            _extract_member(zf, info, temp, source)
            os.replace(temp, target)
        done += info.file_size
    return done, kept


_WORKER_ZIP: dict[str, zipfile.ZipFile] = {}


def _unpack_batch_task(source: str, fma_dir: str, names: list[str]) -> tuple[int, int]:
    """A pool task: :func:`_unpack_batch` with this worker's own handle on the zip.

    The handle is opened once per worker process (reading fma_large's central
    directory of 106k entries takes a moment) and reused for its later batches.
    """
    zf = _WORKER_ZIP.get(source)
    if zf is None:
        for old in _WORKER_ZIP.values():
            old.close()
        _WORKER_ZIP.clear()
        zf = _WORKER_ZIP[source] = zipfile.ZipFile(source)
    return _unpack_batch(zf, Path(fma_dir), Path(source), names)


def unpack(source: Path, fma_dir: Path, archive: Archive, *, jobs: int = 1, progress: bool = True) -> Path:
    """Unpack the verified zip ``source`` into ``fma_dir``; return the completion marker.

    Every member name is checked (zip slip) before anything is written. Members go to
    a hidden temporary name and are renamed when whole; files that an interrupted
    earlier unpack finished (same size and CRC-32) are kept. With ``jobs`` > 1 (or -1:
    all cores) batches of members are decompressed by a process pool: bzip2 is
    CPU-bound, so this scales with the cores. The marker ``<folder>/.unpacked-<sha1>``
    is written last, after the data is synced.
    """
    marker = unpacked_marker(fma_dir, archive)
    if marker.is_file():
        return marker
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{source}: not a readable zip ({exc}); delete it and rerun") from exc
    with zf:
        members = safe_members(zf, fma_dir, source)
        total = sum(info.file_size for info, _ in members)
        batches = [[info.filename for info in batch] for batch in _batches(members)]
        n_jobs = min(joblib.cpu_count() if jobs == -1 else max(1, jobs), max(1, len(batches)))
        log.info(
            f"{archive.name}: unpacking {len(members)} members ({_human(total)}) into {fma_dir}"
            + (f" with {n_jobs} processes" if n_jobs > 1 else "")
        )
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"unpacking {archive.name}",
            disable=not progress,
        ) as bar:
            if n_jobs == 1:
                results = (_unpack_batch(zf, fma_dir, source, names) for names in batches)
            else:
                results = joblib.Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
                    joblib.delayed(_unpack_batch_task)(str(source), str(fma_dir), names) for names in batches
                )
            kept = 0
            for done, batch_kept in results:
                kept += batch_kept
                bar.update(done)
    if kept:
        log.info(f"{archive.name}: {kept} members were already unpacked by an earlier run and were kept")
    os.sync()  # the marker must not outlive the data it vouches for
    marker.parent.mkdir(parents=True, exist_ok=True)
    record = {"zip": archive.name, "sha1": archive.sha1, "members": len(members), "bytes": total}
    atomic_write_text(marker, json.dumps(record, indent=1) + "\n")
    return marker


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, temp: Path, source: Path) -> None:
    """Copy one member into ``temp``; the temp file is removed on any failure."""
    try:
        with zf.open(info) as src, open(temp, "wb") as out:
            while True:
                try:
                    chunk = src.read(CHUNK_BYTES)
                except (zipfile.BadZipFile, EOFError, OSError, zlib.error, ValueError) as exc:
                    raise ArchiveError(
                        f"{source}: member {info.filename} is corrupt ({exc}). Members unpacked so far "
                        f"are kept and the unpack is not marked complete. Delete {source} and "
                        f"{source}.verified and rerun to download the zip again."
                    ) from exc
                if not chunk:
                    break
                out.write(chunk)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the driver


@contextlib.contextmanager
def _lock(fma_dir: Path) -> Iterator[None]:
    """Hold ``fma_dir/.download.lock`` so that two downloads never write the same files."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(fma_dir / ".download.lock", "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise DownloadError(
                f"another download is running in {fma_dir} (it holds "
                f"{fma_dir / '.download.lock'}); wait for it to finish"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def resolve_base_url(base_url: str | None) -> str:
    """``base_url`` if given, else $FMA_BASE_URL, else FMA's server."""
    return base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def download(
    fma_dir: str | os.PathLike,
    subset: str,
    *,
    base_url: str | None = None,
    archives: list[Archive] | None = None,
    retries: int = 5,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
    reserve_bytes: int = GiB,
    space_check: bool = True,
    free_bytes: Callable[[Path], int] = disk_free,
    remove_zip: bool = False,
    unpack_audio: bool = True,
    jobs: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Fetch, verify and unpack FMA's metadata zip and the audio zip of ``subset`` into ``fma_dir``.

    Parameters
    ----------
    fma_dir : path
        Receives the zips and their unpacked trees (``fma_metadata/``, ``fma_<subset>/``).
    subset : {'small', 'medium', 'large'}
    base_url : str, optional
        Where the zips are (default $FMA_BASE_URL, else FMA's server).
    archives : list of Archive, optional
        The zips and their sums; default ``archives_for(subset)`` (FMA's published sums).
    retries, retry_wait, timeout : int, float, float
        Transient errors are retried ``retries`` times in a row, waiting ``retry_wait`` s
        and doubling; ``timeout`` is the socket timeout in seconds.
    reserve_bytes, space_check, free_bytes :
        The free-space check: refuse unless the need plus ``reserve_bytes`` is free;
        ``free_bytes(path)`` measures it (default :func:`disk_free`).
    remove_zip : bool
        Delete each zip after it is unpacked.
    unpack_audio : bool
        False: fetch and verify the audio zip and keep it as it is (the features stage
        reads it directly); only the metadata zip is unpacked.
    jobs : int
        Processes that decompress members (-1: all cores); see :func:`unpack`.

    Returns
    -------
    list of Path
        The completion markers, one per archive: the unpack marker, or for an audio zip
        kept as it is (``unpack_audio=False``) its ``.verified`` marker.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    if retries < 0 or retry_wait < 0 or timeout <= 0 or reserve_bytes < 0:
        raise DownloadError("retries, retry_wait and reserve must be >= 0 and timeout > 0")
    if remove_zip and not unpack_audio:
        raise DownloadError("--remove-zip with --no-unpack would leave no audio: choose one")
    fma_dir = Path(fma_dir)
    base_url = resolve_base_url(base_url)
    archives = list(archives) if archives is not None else archives_for(subset)
    if fma_dir.exists() and not fma_dir.is_dir():
        raise DownloadError(f"--fma-dir {fma_dir} exists and is not a folder")
    if space_check:
        check_space(
            fma_dir,
            archives,
            reserve_bytes=reserve_bytes,
            remove_zip=remove_zip,
            unpack_audio=unpack_audio,
            free_bytes=free_bytes,
        )
    fma_dir.mkdir(parents=True, exist_ok=True)
    markers = []
    with _lock(fma_dir):
        for archive in archives:
            if is_unpacked(fma_dir, archive):
                log.info(f"{archive.name}: already unpacked in {fma_dir / archive.folder}")
            else:
                fetch = dict(retries=retries, retry_wait=retry_wait, timeout=timeout, progress=progress)
                source = obtain_zip(fma_dir, archive, base_url, **fetch)
                if archive.is_audio and not unpack_audio:
                    log.info(
                        f"{archive.name}: kept as a zip (--no-unpack); the features stage reads it directly"
                    )
                    markers.append(verified_marker(fma_dir, archive))
                    continue
                unpack(source, fma_dir, archive, jobs=jobs, progress=progress)
                log.info(f"{archive.name}: unpacked into {fma_dir / archive.folder}")
            if remove_zip and zip_path(fma_dir, archive).exists():
                zip_path(fma_dir, archive).unlink()
                verified_marker(fma_dir, archive).unlink(missing_ok=True)
                log.info(f"{archive.name}: removed (--remove-zip)")
            markers.append(unpacked_marker(fma_dir, archive))
    return markers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fma-dir",
        default="data",
        type=Path,
        help="folder that receives the zips, fma_metadata/ and fma_<subset>/ (default: data)",
    )
    parser.add_argument(
        "--subset",
        choices=SUBSETS,
        default="large",
        help="audio zip to fetch; the metadata zip is always fetched (default: large)",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"where the zips are (default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument(
        "--sums",
        type=Path,
        default=None,
        help="sha1sum-style file ('<sha1>  fma_small.zip' lines) replacing FMA's "
        "published sums, for a mirror that repacked the zips",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=5,
        help="retries in a row for a dropped connection or HTTP 5xx (default: 5)",
    )
    parser.add_argument(
        "--retry-wait",
        type=float,
        default=2.0,
        help="seconds before the first retry; doubles each time, at most 60 (default: 2)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds without data before a connection counts as dropped (default: 60)",
    )
    parser.add_argument(
        "--reserve",
        type=float,
        default=1.0,
        metavar="GIB",
        help="GiB to leave free after unpacking, for the disk-space check (default: 1)",
    )
    parser.add_argument("--no-space-check", action="store_true", help="skip the free disk space check")
    parser.add_argument(
        "--jobs",
        type=int,
        default=-1,
        help="processes that unpack (bzip2 is CPU-bound; default -1: all cores)",
    )
    parser.add_argument(
        "--remove-zip",
        action="store_true",
        help="delete each zip once it is unpacked (a rerun then needs only the markers)",
    )
    parser.add_argument(
        "--no-unpack",
        dest="unpack_audio",
        action="store_false",
        help="fetch and verify the audio zip and keep it as it is: `make features` reads "
        "the tracks it needs straight from it (needs the zip's size on disk, not "
        "twice it, and no unpacking time); the metadata zip is still unpacked",
    )


def main(args: argparse.Namespace) -> int:
    """``python -m preprocess download``: 0 done; a DownloadError is a one-line error (exit 2)."""
    archives = archives_for(args.subset)
    if args.sums is not None:
        archives = with_sums(archives, read_sums(args.sums), str(args.sums))
    try:
        download(
            args.fma_dir,
            args.subset,
            base_url=args.base_url,
            archives=archives,
            retries=args.retries,
            retry_wait=args.retry_wait,
            timeout=args.timeout,
            reserve_bytes=int(args.reserve * GiB),
            space_check=not args.no_space_check,
            remove_zip=args.remove_zip,
            unpack_audio=args.unpack_audio,
            jobs=args.jobs,
            progress=not progress_disabled(),
        )
    except KeyboardInterrupt:
        log.warning("interrupted: what is downloaded and unpacked is kept; rerun the same command to resume")
        raise
    audio = f"fma_{args.subset}/" if args.unpack_audio else f"fma_{args.subset}.zip"
    print(
        f"done: {args.fma_dir} holds fma_metadata/ and {audio}. Next: "
        f"make features FMA_DIR={args.fma_dir} SUBSET={args.subset}",
        flush=True,
    )
    return 0
