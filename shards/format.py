"""Write and read one HDF5 shard. See the package docstring for the layout."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import h5py
import numpy as np

from shards.atomic import atomic_path
from shards.errors import ShardError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation", "test")

_NAME_RE = re.compile(r"^(train|validation|test)-(\d{5})-of-(\d{5})\.h5$")
_HASH_BLOCK = 256  # images hashed per step, so a memmap is never copied whole


def shard_name(split: str, index: int, num_shards: int) -> str:
    """File name of shard ``index`` of ``num_shards`` in ``split``.

    >>> shard_name("train", 3, 50)
    'train-00003-of-00050.h5'
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0 <= index < num_shards <= 99999:
        raise ValueError(f"need 0 <= index < num_shards <= 99999, got {index}, {num_shards}")
    return f"{split}-{index:05d}-of-{num_shards:05d}.h5"


def parse_shard_name(name: str) -> tuple[str, int, int]:
    """Inverse of :func:`shard_name`: ``(split, index, num_shards)``."""
    match = _NAME_RE.match(Path(name).name)
    if not match:
        raise ValueError(f"{name!r} is not a shard name like 'train-00003-of-00050.h5'")
    return match.group(1), int(match.group(2)), int(match.group(3))


def content_checksum(mel: np.ndarray, label: np.ndarray, track_id: np.ndarray) -> str:
    """SHA-256 over a shard's data, independent of how the file was laid out.

    Parameters
    ----------
    mel : np.ndarray, shape (N, H, W), float32 (may be a memmap or h5py dataset)
    label : np.ndarray, shape (N,)
    track_id : np.ndarray, shape (N,)

    Returns
    -------
    str
        ``"sha256:<64 hex digits>"``.
    """
    h = hashlib.sha256(b"fma-shard-v1")
    h.update(np.asarray(mel.shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(track_id, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(label, dtype="<i8").tobytes())
    for start in range(0, mel.shape[0], _HASH_BLOCK):
        block = np.ascontiguousarray(mel[start : start + _HASH_BLOCK], dtype="<f4")
        h.update(block.tobytes())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class ShardContents:
    """Everything in a shard but the images (which are read or memory-mapped apart)."""

    path: Path
    name: str
    split: str
    shard_index: int
    num_shards: int
    subset: str
    recipe: dict
    class_names: list[str]
    versions: dict
    checksum: str
    mel_shape: tuple[int, int, int]
    compression: str | None
    track_id: np.ndarray
    label: np.ndarray
    failed: list[tuple[int, str]] = field(default_factory=list)
    padded: list[tuple[int, float]] = field(default_factory=list)

    @property
    def num_tracks(self) -> int:
        return self.mel_shape[0]


def _validate(mel, label, track_id, class_names, split, failed) -> None:
    if mel.ndim != 3 or mel.dtype != np.float32:
        raise ValueError(f"mel must be float32 of shape (N, H, W), got {mel.dtype} {mel.shape}")
    n = mel.shape[0]
    if label.shape != (n,) or track_id.shape != (n,):
        raise ValueError(f"label {label.shape} and track_id {track_id.shape} must both have shape ({n},)")
    if n and not np.isfinite(mel).all():
        raise ValueError("mel holds NaN or infinite values")
    if n and (label.min() < 0 or label.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}), got {label.min()}..{label.max()}")
    if n > 1 and not (np.diff(track_id) > 0).all():
        raise ValueError("track_id must be strictly increasing")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    overlap = set(int(t) for t, _ in failed) & set(track_id.tolist())
    if overlap:
        raise ValueError(f"tracks both written and failed: {sorted(overlap)[:5]}")


def _create_mel(f: h5py.File, shape: tuple[int, int, int], compression: str | None) -> h5py.Dataset:
    n, height, width = shape
    if n == 0:
        return f.create_dataset("mel", shape=shape, dtype="<f4", track_times=False)
    if compression is not None:
        return f.create_dataset(
            "mel",
            shape=shape,
            dtype="<f4",
            chunks=(1, height, width),
            compression=compression,
            shuffle=True,
            track_times=False,
        )
    # Early allocation + libver='latest' lays the chunks out in order with no
    # index nodes between them: one memmap covers the whole dataset.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((1, height, width))
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(f.id, b"mel", h5py.h5t.IEEE_F32LE, space, dcpl=dcpl)
    return f["mel"]


def write_shard(
    path: str | os.PathLike,
    *,
    mel: np.ndarray,
    label: np.ndarray,
    track_id: np.ndarray,
    split: str,
    shard_index: int,
    num_shards: int,
    subset: str,
    recipe: dict,
    class_names: Sequence[str],
    versions: dict | None = None,
    failed: Iterable[tuple[int, str]] = (),
    compression: str | None = None,
    padded: Iterable[tuple[int, float]] = (),
) -> str:
    """Write one shard atomically and return its content checksum.

    Parameters
    ----------
    path : path-like
        Final file name; must be ``shard_name(split, shard_index, num_shards)``.
        The file is written beside it under a temporary name, read back and
        checked, then renamed: a reader never sees a partial shard.
    mel : np.ndarray, shape (N, H, W), float32, finite
    label : np.ndarray, shape (N,), integer class indices into ``class_names``
    track_id : np.ndarray, shape (N,), strictly increasing
    split, shard_index, num_shards, subset : where the shard belongs
    recipe : dict
        The feature recipe (plain JSON-able data) that made the images.
    class_names : sequence of str
    versions : dict, optional
        Software versions, stored for provenance.
    failed : iterable of (track_id, reason)
        Tracks of this shard that could not be turned into an image.
    compression : {None, "gzip", "lzf"}
        None (default) keeps the images memory-mappable.
    padded : iterable of (track_id, seconds)
        Written tracks whose clip was shorter than the recipe's duration (padded with
        silence by the short-clip policy), with their real length in seconds.

    Returns
    -------
    str
        The content checksum (see :func:`content_checksum`).
    """
    path = Path(path)
    mel = np.asarray(mel)
    label = np.asarray(label, dtype=np.int64)
    track_id = np.asarray(track_id, dtype=np.int64)
    failed = sorted((int(t), str(r)) for t, r in failed)
    padded = sorted((int(t), float(s)) for t, s in padded)
    _validate(mel, label, track_id, class_names, split, failed)
    if not {t for t, _ in padded} <= set(track_id.tolist()):
        raise ValueError("padded tracks must be written tracks")
    if path.name != shard_name(split, shard_index, num_shards):
        raise ValueError(f"{path.name} does not match {shard_name(split, shard_index, num_shards)}")
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"compression must be None, 'gzip' or 'lzf', got {compression!r}")

    checksum = content_checksum(mel, label, track_id)
    attrs = {
        "format_version": FORMAT_VERSION,
        "name": path.name,
        "split": split,
        "shard_index": int(shard_index),
        "num_shards": int(num_shards),
        "subset": subset,
        "recipe": json.dumps(recipe, sort_keys=True),
        "class_names": json.dumps(list(class_names)),
        "versions": json.dumps(versions or {}, sort_keys=True),
        "checksum": checksum,
    }
    # The file is built in memory and written with one plain write: a full disk (or a
    # file size limit) then fails cleanly in Python, never inside HDF5's own I/O,
    # which leaves the library in a state that can crash the process at exit.
    with h5py.File(f"{path.name}.in-memory", "w", driver="core", backing_store=False, libver="latest") as f:
        dset = _create_mel(f, mel.shape, compression)
        if mel.shape[0]:
            dset.write_direct(np.ascontiguousarray(mel))
        f.create_dataset("label", data=label, track_times=False)
        f.create_dataset("track_id", data=track_id, track_times=False)
        f.create_dataset(
            "failed_track_id",
            data=np.array([t for t, _ in failed], dtype=np.int64),
            track_times=False,
        )
        f.create_dataset(
            "failed_reason",
            data=[r for _, r in failed],
            dtype=h5py.string_dtype(),
            shape=(len(failed),),
            track_times=False,
        )
        f.create_dataset(
            "padded_track_id", data=np.array([t for t, _ in padded], dtype=np.int64), track_times=False
        )
        f.create_dataset(
            "padded_seconds", data=np.array([x for _, x in padded], dtype=np.float64), track_times=False
        )
        for key, value in attrs.items():
            f.attrs[key] = value
        f.flush()
        image = f.id.get_file_image()
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(image)
            # Read back what landed on disk before it gets its final name.
            written = read_shard(tmp, verify=True)
            if written.checksum != checksum:
                raise ShardError(f"{tmp}: read-back checksum differs from the data written")
    except OSError as exc:
        raise ShardError(
            f"{path}: cannot write this shard ({exc.strerror or exc}, errno {exc.errno}): the disk is "
            f"full or a file size limit was reached. Nothing was left under this name; free space in "
            f"{path.parent} and rerun (finished shards are kept)."
        ) from exc
    return checksum


def _fail(path: Path, problem: str) -> ShardError:
    return ShardError(
        f"{path}: {problem}. Delete this shard and rerun the features stage "
        f"(`make features` recomputes missing shards only)."
    )


def read_shard(path: str | os.PathLike, *, verify: bool = False) -> ShardContents:
    """Open a shard and return its metadata, labels and track ids.

    Parameters
    ----------
    path : path-like
    verify : bool
        Also read every image: recompute the checksum, check values are finite,
        labels in range and track ids strictly increasing.

    Raises
    ------
    ShardError
        If the file is missing, truncated, not a shard, or fails a check;
        the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise ShardError(f"{path}: shard file is missing. Rerun the features stage to create it.")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            for key in ("mel", "label", "track_id", "failed_track_id", "failed_reason"):
                if key not in f:
                    raise _fail(path, f"dataset {key!r} is missing")
            if attrs.get("format_version") != FORMAT_VERSION:
                raise _fail(
                    path, f"format_version {attrs.get('format_version')!r}, expected {FORMAT_VERSION}"
                )
            mel = f["mel"]
            if mel.ndim != 3 or mel.dtype != np.float32:
                raise _fail(path, f"'mel' is {mel.dtype} {mel.shape}, expected float32 (N, H, W)")
            label = f["label"][()]
            track_id = f["track_id"][()]
            reasons = [r.decode() if isinstance(r, bytes) else str(r) for r in f["failed_reason"][()]]
            failed = list(zip(f["failed_track_id"][()].tolist(), reasons, strict=True))
            padded = []  # absent from shards written before short clips were counted
            if "padded_track_id" in f and "padded_seconds" in f:
                padded = list(
                    zip(f["padded_track_id"][()].tolist(), f["padded_seconds"][()].tolist(), strict=True)
                )
            contents = ShardContents(
                path=path,
                name=str(attrs["name"]),
                split=str(attrs["split"]),
                shard_index=int(attrs["shard_index"]),
                num_shards=int(attrs["num_shards"]),
                subset=str(attrs["subset"]),
                recipe=json.loads(attrs["recipe"]),
                class_names=json.loads(attrs["class_names"]),
                versions=json.loads(attrs["versions"]),
                checksum=str(attrs["checksum"]),
                mel_shape=tuple(int(x) for x in mel.shape),
                compression=mel.compression,
                track_id=track_id,
                label=label,
                failed=failed,
                padded=padded,
            )
            n = contents.num_tracks
            if label.shape != (n,) or track_id.shape != (n,):
                raise _fail(path, f"label {label.shape} / track_id {track_id.shape} do not match {n} images")
            if verify:
                _verify_data(path, contents, mel)
    except ShardError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise _fail(path, f"cannot be read as a shard ({type(exc).__name__}: {exc})") from exc
    return contents


def _verify_data(path: Path, contents: ShardContents, mel: h5py.Dataset) -> None:
    n = contents.num_tracks
    if n and (contents.label.min() < 0 or contents.label.max() >= len(contents.class_names)):
        raise _fail(path, f"labels outside [0, {len(contents.class_names)})")
    if n > 1 and not (np.diff(contents.track_id) > 0).all():
        raise _fail(path, "track ids are not strictly increasing")
    for start in range(0, n, _HASH_BLOCK):
        if not np.isfinite(mel[start : start + _HASH_BLOCK]).all():
            raise _fail(path, f"non-finite values in images {start}..{start + _HASH_BLOCK}")
    actual = content_checksum(mel, contents.label, contents.track_id)
    if actual != contents.checksum:
        raise _fail(path, f"content checksum {actual} differs from the stored {contents.checksum}")


@dataclass(frozen=True)
class Layout:
    """Where a dataset's bytes lie in the file, for ``np.memmap``."""

    offset: int
    shape: tuple[int, ...]
    dtype: str


def data_layout(path: str | os.PathLike, name: str = "mel") -> Layout | None:
    """Byte layout of dataset ``name`` if it can be memory-mapped, else None.

    A dataset can be mapped when it is uncompressed and its bytes lie in one
    contiguous run: a contiguous dataset, or a chunked one whose chunks are in
    order with no gaps (checked against HDF5's own chunk index).

    Raises
    ------
    ShardError
        If the layout points past the end of the file (a truncated shard).
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            dset = f[name]
            shape = tuple(int(x) for x in dset.shape)
            dtype = dset.dtype.newbyteorder("<").str if dset.dtype.kind in "fiu" else None
            if dtype is None or dset.compression is not None or 0 in shape:
                return None
            itemsize = dset.dtype.itemsize
            nbytes = int(np.prod(shape)) * itemsize
            if dset.chunks is None:
                offset = dset.id.get_offset()
                if offset is None:
                    return None
            else:
                chunk_bytes = int(np.prod(dset.chunks)) * itemsize
                if dset.chunks[1:] != shape[1:]:
                    return None
                offsets: list[int] = []
                dset.id.chunk_iter(lambda info: offsets.append(info.byte_offset))
                expected_count = -(-shape[0] // dset.chunks[0])
                if len(offsets) != expected_count:
                    return None
                offsets_arr = np.asarray(offsets, dtype=np.int64)
                if len(offsets) > 1 and not (np.diff(offsets_arr) == chunk_bytes).all():
                    return None
                offset = int(offsets_arr[0])
    except (OSError, KeyError) as exc:
        raise _fail(path, f"cannot be read as a shard ({type(exc).__name__}: {exc})") from exc
    if offset + nbytes > path.stat().st_size:
        raise _fail(
            path,
            f"file is truncated: {name!r} needs bytes up to {offset + nbytes}, "
            f"file has {path.stat().st_size}",
        )
    return Layout(offset=int(offset), shape=shape, dtype=dtype)


def memmap(path: str | os.PathLike, layout: Layout) -> np.memmap:
    """Read-only ``np.memmap`` of a dataset with a known :class:`Layout`."""
    return np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.offset, shape=layout.shape)


def mel_memmap(path: str | os.PathLike) -> np.memmap | None:
    """Memory-map a shard's images, shape (N, H, W) float32; None if compressed."""
    layout = data_layout(path, "mel")
    return None if layout is None else memmap(path, layout)
