"""Where the features stage reads a subset's MP3s from: the unpacked tree or FMA's zip itself.

FMA ships each subset as one zip (``fma_large.zip``: 93 GiB, 106,574 bzip2-compressed
MP3 members ``fma_large/NNN/NNNNNN.mp3``). Unpacking it doubles the disk needed and
decompresses every member, although only the tracks with a top-level genre (49,598 of
fma_large's 106,574) are ever used. So the features stage reads either

- the unpacked tree ``FMA_DIR/fma_<subset>/NNN/NNNNNN.mp3`` (or a larger subset's), or
- the zip ``FMA_DIR/fma_<subset>.zip`` (or a larger subset's), found automatically when
  no tree is there, or named with ``--audio-zip``.

From a zip, each worker opens the zip once per shard and decompresses only the members
of that shard's tracks, one at a time, into memory; the decoder reads the bytes from
there. Each member is read whole, so zipfile checks its CRC-32 before anything is decoded.
A member that does not decode from memory is tried once more as a file named like the
tree's (libsndfile trusts a ``.mp3`` name where the first bytes say nothing, e.g. an
MP3 behind leading junk), so a zip gives exactly the tree's images and failure reasons.

Failures, as for files on disk:

- a damaged or truncated zip whose directory cannot be read is a run-level
  :class:`AudioSourceError` naming the zip (nothing is decoded);
- a missing member fails its track with ``missing file: no member ... in <zip>``;
- a member that does not decompress or whose CRC-32 differs fails its track with
  ``bad zip member: <member> in <zip>: <what zipfile said>``.

:class:`AudioSource` is plain data (it travels to joblib, dask and SLURM workers);
:func:`open_tracks` is the per-shard reader.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, TypeVar, Union

from preprocess import fma
from shards.errors import FmaGenreError

T = TypeVar("T")
Source = Union[Path, BinaryIO]  # what the decoder reads: a path, or a binary file object

# A member holding a track: <anything>/NNN/NNNNNN.mp3, as fma.audio_relpath lays it out.
_TRACK_MEMBER = re.compile(r"(?:^|/)(\d{3}/\d{6}\.mp3)$")


class AudioSourceError(FmaGenreError):
    """The audio cannot be read at all (no tree or zip, or a zip whose directory is damaged)."""


class MemberError(ValueError):
    """One track cannot be read from the zip; ``str(exc)`` is the reason stored for the track."""


@dataclass(frozen=True)
class AudioSource:
    """Where a subset's MP3s are: a folder of ``NNN/NNNNNN.mp3`` files or a zip of them.

    Attributes
    ----------
    path : str
        The folder (``.../fma_large``) or the zip (``.../fma_large.zip``), absolute.
    member_prefix : str or None
        None for a folder; for a zip, what comes before ``NNN/NNNNNN.mp3`` in its
        member names (``'fma_large/'`` in FMA's zips).
    """

    path: str
    member_prefix: str | None = None

    @property
    def is_zip(self) -> bool:
        return self.member_prefix is not None

    def member(self, track_id: int) -> str:
        """The zip member holding ``track_id`` (``fma_large/000/000002.mp3``)."""
        return f"{self.member_prefix or ''}{fma.audio_relpath(track_id)}"

    def describe(self) -> str:
        return f"the zip {self.path}" if self.is_zip else f"the folder {self.path}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AudioSource":
        return cls(path=str(data["path"]), member_prefix=data.get("member_prefix"))


def open_zip(path: str | os.PathLike) -> zipfile.ZipFile:
    """Open ``path`` and read its directory; AudioSourceError naming the zip if it cannot be."""
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise AudioSourceError(f"{path}: no such zip") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise AudioSourceError(
            f"{path}: cannot read the zip's directory ({exc}): the zip is damaged or incomplete. "
            f"Check it against FMA's SHA-1 with `make download UNPACK=0` (after deleting "
            f"{path}.verified, if there is one); a zip whose sum is wrong is moved aside and fetched "
            f"again."
        ) from None


def zip_source(path: str | os.PathLike) -> AudioSource:
    """An :class:`AudioSource` for the zip at ``path``: its directory is read and checked.

    Raises
    ------
    AudioSourceError
        The zip is missing or its directory is damaged, or it holds no ``NNN/NNNNNN.mp3`` member.
    """
    path = Path(path).absolute()
    if not path.is_file():
        hint = (
            f" ({path.name}.part exists: the download is not finished; rerun `make download`)"
            if path.with_name(path.name + ".part").exists()
            else ""
        )
        raise AudioSourceError(f"{path}: no such zip{hint}")
    with open_zip(path) as zf:
        for name in zf.namelist():
            match = _TRACK_MEMBER.search(name)
            if match is not None:
                return AudioSource(str(path), member_prefix=name[: match.start(1)])
    raise AudioSourceError(f"{path}: no member is an FMA track (NNN/NNNNNN.mp3); is it an FMA audio zip?")


def find_audio_source(
    fma_dir: str | os.PathLike, subset: str, audio_zip: str | os.PathLike | None = None
) -> AudioSource:
    """The subset's audio: ``audio_zip`` if given, else a tree, else a zip in ``fma_dir``.

    Subsets are nested, so a larger subset's tree or zip holds the smaller subset's
    tracks: looks for ``fma_<subset>/``, then the larger subsets' folders, then
    ``fma_<subset>.zip`` and the larger subsets' zips.

    Raises
    ------
    AudioSourceError
        Nothing found (the message lists where it looked), or a damaged zip.
    """
    if audio_zip is not None:
        return zip_source(audio_zip)
    if subset not in fma.SUBSETS:
        raise ValueError(f"subset must be one of {fma.SUBSETS}, got {subset!r}")
    root = Path(fma_dir)
    names = [f"fma_{s}" for s in fma.SUBSETS[fma.SUBSETS.index(subset) :]]
    for name in names:
        if (root / name).is_dir():
            return AudioSource(str((root / name).absolute()))
    for name in names:
        if (root / f"{name}.zip").is_file():
            return zip_source(root / f"{name}.zip")
    unfinished = [n for n in names if (root / f"{n}.zip.part").exists()]
    hint = (
        f" {root / (unfinished[0] + '.zip.part')} is an unfinished download: rerun "
        f"`make download FMA_DIR={root} SUBSET={subset} UNPACK=0`."
        if unfinished
        else f" Run `make download FMA_DIR={root} SUBSET={subset}` (add UNPACK=0 to keep only the zip), "
        f"or name a zip with --audio-zip."
    )
    raise AudioSourceError(
        f"no audio for subset {subset!r} in {root}: looked for the folders "
        f"{', '.join(n + '/' for n in names)} and the zips {', '.join(n + '.zip' for n in names)}.{hint}"
    )


class _FolderTracks:
    """Tracks of an unpacked tree: each is its path (a missing file is the decoder's ``missing file``)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __call__(self, track_id: int) -> Path:
        return self.folder / fma.audio_relpath(track_id)

    def apply(self, track_id: int, work: Callable[[Source], T]) -> T:
        return work(self(track_id))


class _ZipTracks:
    """Tracks of one open zip: each member is read whole into memory (zipfile checks its CRC-32)."""

    def __init__(self, source: AudioSource, zf: zipfile.ZipFile, stack: contextlib.ExitStack):
        self.source, self.zf, self.stack = source, zf, stack
        self.scratch: Path | None = None

    def __call__(self, track_id: int) -> io.BytesIO:
        name = self.source.member(track_id)
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise MemberError(f"missing file: no member {name} in {self.source.path}") from None
        try:
            with self.zf.open(info) as member:
                data = member.read()  # to EOF: zipfile checks the CRC-32 there
        except (
            zipfile.BadZipFile,
            OSError,
            EOFError,
            zlib.error,
            NotImplementedError,
            RuntimeError,
            ValueError,
        ) as exc:
            raise MemberError(f"bad zip member: {name} in {self.source.path}: {exc}") from None
        return io.BytesIO(data)

    def apply(self, track_id: int, work: Callable[[Source], T]) -> T:
        """``work(member in memory)``; if that fails, ``work(the member as a file NNNNNN.mp3)``.

        libsndfile recognises most MP3s by their first bytes, but for a path it also
        trusts the ``.mp3`` extension: an MP3 behind leading junk decodes from the tree
        and not from memory. So a member that fails from memory is tried once more as a
        file named like the tree's (in /dev/shm where it exists, i.e. still in memory):
        the image or the failure reason is then exactly the tree's.
        """
        from preprocess.audio import TrackFailure, TrackTimeout

        data = self(track_id)
        try:
            return work(data)
        except TrackTimeout:
            raise
        except TrackFailure:
            path = self._scratch() / Path(fma.audio_relpath(track_id)).name
            path.write_bytes(data.getbuffer())
            try:
                return work(path)
            finally:
                path.unlink(missing_ok=True)

    def _scratch(self) -> Path:
        if self.scratch is None:
            shm = Path("/dev/shm")
            where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
            self.scratch = Path(
                self.stack.enter_context(tempfile.TemporaryDirectory(prefix="fma-zip-", dir=where))
            )
        return self.scratch


@contextlib.contextmanager
def open_tracks(source: AudioSource) -> Iterator[_FolderTracks | _ZipTracks]:
    """A reader for one worker's shard.

    ``reader(track_id)`` is what the decoder takes: the track's path (folder), or its
    member's bytes as an in-memory binary file (zip; :class:`MemberError` if the member
    is missing or damaged). ``reader.apply(track_id, work)`` returns ``work(source)``;
    for a zip member that ``work`` fails on (``TrackFailure``) from memory, it retries
    from a file named like the tree's, so the result always equals the tree's.
    A zip is opened once here, for all the shard's tracks.

    Raises
    ------
    AudioSourceError
        The zip's directory cannot be read.
    """
    if not source.is_zip:
        yield _FolderTracks(Path(source.path))
        return
    with contextlib.ExitStack() as stack:
        zf = stack.enter_context(open_zip(source.path))
        yield _ZipTracks(source, zf, stack)


def missing_tracks(source: AudioSource, track_ids: list[int]) -> list[int]:
    """The ids among ``track_ids`` with no file (folder) or no member (zip)."""
    if not source.is_zip:
        folder = Path(source.path)
        return [t for t in track_ids if not (folder / fma.audio_relpath(t)).is_file()]
    with open_zip(source.path) as zf:
        names = set(zf.namelist())
    return [t for t in track_ids if source.member(t) not in names]


def track_location(source: AudioSource, track_id: int) -> str:
    """Where a track is read from, for messages: a path, or ``member in zip``."""
    if source.is_zip:
        return f"{source.member(track_id)} in {source.path}"
    return str(Path(source.path) / fma.audio_relpath(track_id))
