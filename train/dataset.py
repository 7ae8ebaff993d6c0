"""A PyTorch Dataset over one split of a shard set, memory-mapping the images.

Opening (:class:`ShardDataset`) reads the manifest, checks each shard of the
split cheaply (recipe, class names, stored checksum and track count against the
manifest; the byte layout against HDF5's chunk index; the file long enough) and
keeps only plain data: paths, layouts, labels. The ``np.memmap`` objects (or,
for a compressed shard, the ``h5py.File``) are opened lazily on first access in
the process that reads, so nothing opened before a DataLoader forks its workers
is shared with them.

``dataset[i]`` gives one sample, ``dataset[index_array]`` one whole batch in a
single gather (used with :class:`train.sampling.EpochBatchSampler` and
``DataLoader(batch_size=None)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

import shards
from shards import ShardError


@dataclass(frozen=True)
class ShardInfo:
    """Plain data about one shard: safe to pickle into DataLoader workers."""

    path: Path
    num_tracks: int
    start: int  # global index of its first sample
    layout: shards.Layout | None  # None: compressed, read through h5py


def _check_shard(path: Path, entry: dict, manifest: dict, verify: bool) -> shards.ShardContents:
    contents = shards.read_shard(path, verify=verify)
    fix = "Rerun the features stage for this shard (delete it first), then `make finalize`."
    if contents.recipe != manifest["recipe"]:
        raise ShardError(
            f"{path}: made with recipe {contents.recipe}, but the manifest says {manifest['recipe']}. {fix}"
        )
    if list(contents.class_names) != list(manifest["class_names"]):
        raise ShardError(
            f"{path}: class names {contents.class_names} differ from the manifest's "
            f"{manifest['class_names']}. {fix}"
        )
    if contents.checksum != entry["checksum"]:
        raise ShardError(
            f"{path}: checksum {contents.checksum} differs from the manifest's "
            f"{entry['checksum']} (the file was replaced or rewritten). {fix}"
        )
    if contents.num_tracks != int(entry["num_tracks"]):
        raise ShardError(
            f"{path}: holds {contents.num_tracks} tracks, the manifest says {entry['num_tracks']}. {fix}"
        )
    if contents.num_tracks and contents.mel_shape[1:] != (128, 128):
        raise ShardError(f"{path}: images are {contents.mel_shape[1:]}, expected (128, 128). {fix}")
    return contents


class ShardDataset(torch.utils.data.Dataset):
    """One split of a shard set.

    Parameters
    ----------
    folder : path-like
        The shard set folder (holds ``manifest.json``).
    split : {"train", "validation", "test"}
    verify : bool
        Recompute every shard's content checksum and check the values are finite
        (default). This reads every image once (seconds for fma_large, and it warms
        the page cache); a flipped byte or a damaged shard is then an error naming the
        file rather than a silently wrong image. False checks only what is cheap:
        recipe, class names, stored checksum and track count against the manifest,
        and that the file holds all the image bytes.

    Attributes
    ----------
    labels : np.ndarray, shape (N,), int64
    track_ids : np.ndarray, shape (N,), int64
    class_names : list of str
    recipe : dict

    Images come out raw (log-mel dB); standardisation is :mod:`train.normalization`'s,
    applied on the device by :class:`train.inference.BatchSource`.
    """

    def __init__(self, folder: str | os.PathLike, split: str, *, verify: bool = True):
        self.folder = Path(folder)
        self.split = split
        self.manifest = shards.read_manifest(self.folder)
        self.class_names = list(self.manifest["class_names"])
        self.recipe = self.manifest["recipe"]
        entries = shards.shard_entries(self.manifest, split)
        infos, labels, track_ids, start = [], [], [], 0
        for entry in entries:
            path = self.folder / entry["name"]
            contents = _check_shard(path, entry, self.manifest, verify)
            layout = shards.data_layout(path, "mel") if contents.num_tracks else None
            infos.append(ShardInfo(path, contents.num_tracks, start, layout))
            labels.append(contents.label.astype(np.int64))
            track_ids.append(contents.track_id.astype(np.int64))
            start += contents.num_tracks
        self.shards = infos
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.track_ids = np.concatenate(track_ids) if track_ids else np.zeros(0, np.int64)
        self._starts = np.array([s.start for s in infos], dtype=np.int64)
        self._ram: np.ndarray | None = None
        self._open_pid: int | None = None
        self._readers: dict[int, object] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    # -- per-process readers ------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"] = {}
        state["_open_pid"] = None
        return state

    def _reader(self, shard: int):
        """The open memmap (or h5py dataset) of shard ``shard`` in this process."""
        if self._open_pid != os.getpid():
            self._readers = {}  # inherited over fork: never reuse
            self._open_pid = os.getpid()
        reader = self._readers.get(shard)
        if reader is None:
            info = self.shards[shard]
            try:
                if info.layout is not None:
                    # A plain ndarray view of the memmap (which it keeps alive): numpy's
                    # subclass handling would cost more than the copy of a small group.
                    reader = np.asarray(shards.memmap(info.path, info.layout))
                else:
                    # Small chunk cache: memory must not grow with the number of shards.
                    reader = h5py.File(info.path, "r", rdcc_nbytes=1 << 16)["mel"]
            except (OSError, ValueError) as exc:
                raise ShardError(
                    f"{info.path}: cannot open the images ({exc}). The file changed "
                    f"or was truncated after the dataset was opened."
                ) from exc
            self._readers[shard] = reader
        return reader

    def close(self) -> None:
        """Drop this process's open readers (memmaps and HDF5 files)."""
        for reader in self._readers.values():
            if isinstance(reader, h5py.Dataset):
                reader.file.close()
        self._readers = {}

    # -- access ---------------------------------------------------------------

    def _read(self, indices: np.ndarray) -> np.ndarray:
        """Raw images of sorted ``indices``: shape (B, 128, 128) float32."""
        out = np.empty((len(indices), 128, 128), dtype=np.float32)
        if self._ram is not None:
            self._ram.take(indices, axis=0, out=out, mode="clip")
            return out
        if len(indices) == 0:
            return out
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        local_all = indices - self._starts[shard_of]
        bounds = (np.flatnonzero(np.diff(shard_of)) + 1).tolist()
        for lo, hi in zip([0, *bounds], [*bounds, len(indices)], strict=True):
            shard = int(shard_of[lo])
            local = local_all[lo:hi]
            reader = self._reader(shard)
            if isinstance(reader, np.ndarray):  # memmap view (h5py.Dataset otherwise)
                # mode="clip": indices are checked in gather; "raise" would buffer the output
                reader.take(local, axis=0, out=out[lo:hi], mode="clip")
            else:
                unique, inverse = np.unique(local, return_inverse=True)
                out[lo:hi] = reader[unique][inverse]
        return out

    def gather(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch in one call.

        Parameters
        ----------
        indices : array-like of int, shape (B,)
            Any order, repeats allowed; sorted input skips the reordering.

        Returns
        -------
        x : torch.Tensor, shape (B, 1, 128, 128), float32 (raw log-mel)
        y : torch.Tensor, shape (B,), int64
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < -n or high >= n:
                raise IndexError(f"index out of range for a dataset of {n} samples")
            if low < 0:
                indices = np.where(indices < 0, indices + n, indices)
        if indices.size > 1 and not (indices[1:] >= indices[:-1]).all():
            order = np.argsort(indices, kind="stable")
            images = np.empty((len(indices), 128, 128), dtype=np.float32)
            images[order] = self._read(indices[order])
        else:
            images = self._read(indices)
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(self.labels[indices])

    def __getitem__(self, index):
        """``dataset[i]`` -> (x (1, 128, 128) float32, y int64 scalar);
        ``dataset[array]`` -> a batch as :meth:`gather`."""
        if np.ndim(index) == 0:
            x, y = self.gather([int(index)])
            return x[0], y[0]
        return self.gather(index)

    # -- whole-split operations ----------------------------------------------

    def preload(self) -> None:
        """Copy every image of the split into one array in RAM, shape (N, 128, 128)."""
        self._ram = self._read(np.arange(len(self), dtype=np.int64))
        self.close()

    def raw_array(self) -> np.ndarray:
        """All images, not standardised: shape (N, 128, 128) float32 (a copy)."""
        return self._read(np.arange(len(self), dtype=np.int64))

    def class_counts(self) -> np.ndarray:
        """Samples per class, shape (num_classes,), int64."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)
