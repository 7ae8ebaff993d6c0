"""Write and read one HDF5 shard. See the package docstring for the layout."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from shards.atomic import atomic_path
from shards.errors import ShardError

FORMAT_VERSION = 1  # a shard with nothing but the reference image (byte-identical to the first format)
EXTRAS_FORMAT_VERSION = 2  # a shard that also holds extra per-track datasets (EXTRAS)
FORMAT_VERSIONS = (FORMAT_VERSION, EXTRAS_FORMAT_VERSION)
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


@dataclass(frozen=True)
class Extra:
    """An optional per-track dataset a shard may hold beside ``mel`` (see :data:`EXTRAS`).

    Attributes
    ----------
    dtype : str
        Its numpy dtype (little-endian), e.g. ``"<f2"``.
    ndim : int
        Dimensions, the track axis first.
    about : str
        What the shard's ``extras`` attribute says of it (a JSON object with this key).
    """

    dtype: str
    ndim: int
    about: str


#: The optional per-track datasets, by name: the one place a new per-track dataset is declared.
#: Each is chunked one track per chunk and, uncompressed, memory-mappable like ``mel``.
EXTRAS = {
    # A finer log-mel image of the same excerpt, from the same decode: (N, n_mels, n_frames).
    "mel_fine": Extra("<f2", 3, "recipe: the fine image's recipe (preprocess.recipe.Recipe.to_dict())"),
    # Multi-hot genres over FMA's whole taxonomy: (N, G), 0/1.
    "genres": Extra("|u1", 2, "genre_table: G rows {id, title, parent, top_level}, column order"),
}
#: ``label`` of a track with no top-level genre (only in a shard that holds ``genres``).
NO_LABEL = -1


def content_checksum(
    mel: np.ndarray, label: np.ndarray, track_id: np.ndarray, extras: dict | None = None
) -> str:
    """SHA-256 over a shard's data, independent of how the file was laid out.

    Parameters
    ----------
    mel : np.ndarray, shape (N, H, W), float32 (may be a memmap or h5py dataset)
    label : np.ndarray, shape (N,)
    track_id : np.ndarray, shape (N,)
    extras : dict, optional
        name -> array (N, ...) of the :data:`EXTRAS` the shard holds. Without any, the checksum
        is the first format's.

    Returns
    -------
    str
        ``"sha256:<64 hex digits>"``.
    """
    h = hashlib.sha256(b"fma-shard-v1")
    h.update(np.asarray(mel.shape, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(track_id, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(label, dtype="<i8").tobytes())
    _hash_rows(h, mel, "<f4")
    for name in sorted(extras or {}):
        data = extras[name]
        h.update(name.encode() + b"\0" + np.asarray(data.shape, dtype="<i8").tobytes())
        _hash_rows(h, data, EXTRAS[name].dtype)
    return "sha256:" + h.hexdigest()


def _hash_rows(h, data, dtype: str) -> None:
    """Feed ``data`` to ``h`` a block of rows at a time, so a memmap is never copied whole."""
    for start in range(0, data.shape[0], _HASH_BLOCK):
        h.update(np.ascontiguousarray(data[start : start + _HASH_BLOCK], dtype=dtype).tobytes())


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
    extras: dict = field(default_factory=dict)  # name -> what the shard says of it (EXTRAS)
    extra_shapes: dict = field(default_factory=dict)  # name -> shape, the track axis first

    @property
    def num_tracks(self) -> int:
        return self.mel_shape[0]


def lowest_label(extras) -> int:
    """The smallest valid ``label``: :data:`NO_LABEL` in a shard holding ``genres``, else 0."""
    return NO_LABEL if "genres" in extras else 0


def _validate_extra(name: str, data: np.ndarray, n: int) -> None:
    """ValueError unless ``data`` fits :data:`EXTRAS` ``[name]`` for ``n`` tracks."""
    if name not in EXTRAS:
        raise ValueError(f"unknown extra dataset {name!r}; known: {sorted(EXTRAS)}")
    spec = EXTRAS[name]
    if data.ndim != spec.ndim or data.shape[0] != n or data.dtype != np.dtype(spec.dtype):
        raise ValueError(
            f"{name} must be {np.dtype(spec.dtype)} with {spec.ndim} dimensions and {n} rows, "
            f"got {data.dtype} {data.shape}"
        )
    if n and data.dtype.kind == "f" and not np.isfinite(data).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    if n and name == "genres" and data.max() > 1:
        raise ValueError("genres must hold 0 or 1 (multi-hot)")


def _validate(mel, label, track_id, class_names, split, failed, extras) -> None:
    if mel.ndim != 3 or mel.dtype != np.float32:
        raise ValueError(f"mel must be float32 of shape (N, H, W), got {mel.dtype} {mel.shape}")
    n = mel.shape[0]
    if label.shape != (n,) or track_id.shape != (n,):
        raise ValueError(f"label {label.shape} and track_id {track_id.shape} must both have shape ({n},)")
    if n and not np.isfinite(mel).all():
        raise ValueError("mel holds NaN or infinite values")
    low = lowest_label(extras)
    if n and (label.min() < low or label.max() >= len(class_names)):
        raise ValueError(f"labels must lie in [{low}, {len(class_names)}), got {label.min()}..{label.max()}")
    for name, (data, _) in extras.items():
        _validate_extra(name, data, n)
    if n > 1 and not (np.diff(track_id) > 0).all():
        raise ValueError("track_id must be strictly increasing")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    overlap = set(int(t) for t, _ in failed) & set(track_id.tolist())
    if overlap:
        raise ValueError(f"tracks both written and failed: {sorted(overlap)[:5]}")


_H5_TYPES = {"<f4": h5py.h5t.IEEE_F32LE, "<f2": h5py.h5t.IEEE_F16LE, "|u1": h5py.h5t.STD_U8LE}


def _write_per_track(f: h5py.File, name: str, data: np.ndarray, compression: str | None) -> h5py.Dataset:
    """Dataset ``name`` of ``data`` (N, ...), one track per chunk; uncompressed, memory-mappable.

    Returns the open dataset: the caller keeps it open until the file is flushed, so that a
    compressed dataset's chunks leave HDF5's chunk cache then, as they always did (the bytes
    of a shard without extras stay the first format's).
    """
    dtype = data.dtype.newbyteorder("<").str if data.dtype.itemsize > 1 else data.dtype.str
    if data.shape[0] == 0:
        return f.create_dataset(name, shape=data.shape, dtype=dtype, track_times=False)
    chunk = (1, *data.shape[1:])
    if compression is not None:
        dset = f.create_dataset(
            name,
            shape=data.shape,
            dtype=dtype,
            chunks=chunk,
            compression=compression,
            shuffle=True,
            track_times=False,
        )
        dset.write_direct(np.ascontiguousarray(data))
        return dset
    # Early allocation + libver='latest' lays the chunks out in order with no
    # index nodes between them: one memmap covers the whole dataset.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(chunk)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(data.shape)
    h5py.h5d.create(f.id, name.encode(), _H5_TYPES[dtype], space, dcpl=dcpl)
    dset = f[name]
    dset.write_direct(np.ascontiguousarray(data))
    return dset


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
    extras: Mapping[str, tuple[np.ndarray, dict]] | None = None,
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
    extras : mapping, optional
        name -> (array (N, ...), what it is): the optional per-track datasets of :data:`EXTRAS`,
        e.g. ``{"mel_fine": (images float16 (N, 128, T), {"recipe": {...}})}`` or
        ``{"genres": (multi_hot uint8 (N, G), {"genre_table": [...]})}``. With ``genres``,
        ``label`` may be :data:`NO_LABEL` (a track without a top-level genre). Without extras the
        file is the first format's, byte for byte.

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
    extras = {name: (np.asarray(data), dict(about)) for name, (data, about) in (extras or {}).items()}
    _validate(mel, label, track_id, class_names, split, failed, extras)
    if not {t for t, _ in padded} <= set(track_id.tolist()):
        raise ValueError("padded tracks must be written tracks")
    if path.name != shard_name(split, shard_index, num_shards):
        raise ValueError(f"{path.name} does not match {shard_name(split, shard_index, num_shards)}")
    if compression not in (None, "gzip", "lzf"):
        raise ValueError(f"compression must be None, 'gzip' or 'lzf', got {compression!r}")

    extra_data = {k: data for k, (data, _) in extras.items()}
    checksum = content_checksum(mel, label, track_id, extra_data)
    attrs = {
        "format_version": EXTRAS_FORMAT_VERSION if extras else FORMAT_VERSION,
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
    if extras:
        attrs["extras"] = json.dumps({k: about for k, (_, about) in extras.items()}, sort_keys=True)
    tables = _tables(label, track_id, failed, padded)
    image = _file_image(path.name, attrs, mel, tables, extra_data, compression)
    _land(path, image, checksum)
    return checksum


def _tables(label: np.ndarray, track_id: np.ndarray, failed: list, padded: list) -> dict[str, dict]:
    """A shard's small datasets, in the order they are written: name -> ``create_dataset`` arguments."""
    return {
        "label": {"data": label},
        "track_id": {"data": track_id},
        "failed_track_id": {"data": np.array([t for t, _ in failed], dtype=np.int64)},
        "failed_reason": {
            "data": [r for _, r in failed],
            "dtype": h5py.string_dtype(),
            "shape": (len(failed),),
        },
        "padded_track_id": {"data": np.array([t for t, _ in padded], dtype=np.int64)},
        "padded_seconds": {"data": np.array([x for _, x in padded], dtype=np.float64)},
    }


def _file_image(
    name: str, attrs: dict, mel: np.ndarray, tables: dict, extra_data: dict, compression: str | None
) -> bytes:
    """The bytes of a shard file, built in memory: ``mel``, then ``tables``, then ``extra_data``
    (name -> array (N, ...)) by name.

    The file is built in memory and written with one plain write (:func:`_land`): a full disk (or
    a file size limit) then fails cleanly in Python, never inside HDF5's own I/O, which leaves the
    library in a state that can crash the process at exit.
    """
    with h5py.File(f"{name}.in-memory", "w", driver="core", backing_store=False, libver="latest") as f:
        open_datasets = [_write_per_track(f, "mel", mel, compression)]
        for key, arguments in tables.items():
            f.create_dataset(key, track_times=False, **arguments)
        for key, data in sorted(extra_data.items()):
            open_datasets.append(_write_per_track(f, key, data, compression))
        for key, value in attrs.items():
            f.attrs[key] = value
        f.flush()
        image = f.id.get_file_image()
        del open_datasets
    return image


def _land(path: Path, image: bytes, checksum: str) -> None:
    """Write ``image`` to ``path`` atomically, read it back and check its content checksum first."""
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
            if attrs.get("format_version") not in FORMAT_VERSIONS:
                raise _fail(
                    path,
                    f"format_version {attrs.get('format_version')!r}, expected one of {FORMAT_VERSIONS}",
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
            extras = _read_extras(path, f, attrs)
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
                extras=extras,
                extra_shapes={name: tuple(int(x) for x in f[name].shape) for name in extras},
            )
            n = contents.num_tracks
            if label.shape != (n,) or track_id.shape != (n,):
                raise _fail(path, f"label {label.shape} / track_id {track_id.shape} do not match {n} images")
            if verify:
                _verify_data(path, contents, f)
    except ShardError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise _fail(path, f"cannot be read as a shard ({type(exc).__name__}: {exc})") from exc
    return contents


def _read_extras(path: Path, f: h5py.File, attrs: dict) -> dict:
    """The ``extras`` attribute of a shard, checked against its datasets and :data:`EXTRAS`."""
    if attrs["format_version"] == FORMAT_VERSION:
        return {}
    extras = json.loads(attrs.get("extras", "{}"))
    if not isinstance(extras, dict) or not extras:
        raise _fail(path, "format_version 2 but no 'extras' attribute naming its extra datasets")
    n = f["mel"].shape[0]
    for name in extras:
        if name not in EXTRAS:
            raise _fail(
                path, f"unknown extra dataset {name!r} (known: {sorted(EXTRAS)}); a newer version wrote it?"
            )
        if name not in f:
            raise _fail(path, f"dataset {name!r} is missing")
        dset, spec = f[name], EXTRAS[name]
        if dset.ndim != spec.ndim or dset.shape[0] != n or dset.dtype != np.dtype(spec.dtype):
            raise _fail(
                path, f"{name!r} is {dset.dtype} {dset.shape}, expected {np.dtype(spec.dtype)} with {n} rows"
            )
    return extras


def _verify_data(path: Path, contents: ShardContents, f: h5py.File) -> None:
    n = contents.num_tracks
    low = lowest_label(contents.extras)
    if n and (contents.label.min() < low or contents.label.max() >= len(contents.class_names)):
        raise _fail(path, f"labels outside [{low}, {len(contents.class_names)})")
    if n > 1 and not (np.diff(contents.track_id) > 0).all():
        raise _fail(path, "track ids are not strictly increasing")
    for name in ("mel", *sorted(contents.extras)):
        data = f[name]
        for start in range(0, n, _HASH_BLOCK):
            block = data[start : start + _HASH_BLOCK]
            if block.dtype.kind == "f" and not np.isfinite(block).all():
                raise _fail(path, f"non-finite values in {name!r} rows {start}..{start + _HASH_BLOCK}")
            if name == "genres" and block.size and block.max() > 1:
                raise _fail(path, f"'genres' rows {start}..{start + _HASH_BLOCK} hold values other than 0/1")
    extras = {name: f[name] for name in contents.extras}
    actual = content_checksum(f["mel"], contents.label, contents.track_id, extras)
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


def read_extra(path: str | os.PathLike, name: str) -> np.ndarray:
    """The whole extra dataset ``name`` of a shard, read into memory (e.g. ``genres`` (N, G) uint8).

    Raises
    ------
    ShardError
        If the shard does not hold it, naming the file.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if name not in json.loads(f.attrs.get("extras", "{}")):
                raise _fail(path, f"it holds no {name!r} dataset (made without it?)")
            return f[name][()]
    except ShardError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise _fail(path, f"cannot be read as a shard ({type(exc).__name__}: {exc})") from exc
