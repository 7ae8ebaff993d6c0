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

It reads one image of the shards: ``mel`` (the 128 x 128 reference image) or ``mel_fine`` (the
finer image, 128 x 1271 float16, in shard sets made with ``--recipes reference,fine``). With
``crop_frames`` a batch can be a ``(B, 2)`` array of (index, start frame) rows: each sample is
then the crop ``image[:, start:start + crop_frames]`` (random training crops,
:func:`train.chunks.crop_starts`), read straight from the memory map.

What a sample's ``y`` is depends on ``target``: the top-level class (``label``, the default) or
the multi-hot genre row (``genres``, shards made with ``--target genres_all``; held in RAM, G
bytes per track).
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
from train.chunks import check_crop

#: What a sample's ``y`` can be: the top-level class, or the multi-hot genre row.
TARGETS = ("label", "genres")


@dataclass(frozen=True)
class ShardInfo:
    """Plain data about one shard: safe to pickle into DataLoader workers."""

    path: Path
    num_tracks: int
    start: int  # global index of its first sample
    layout: shards.Layout | None  # None: compressed, read through h5py


IMAGES = ("mel", "mel_fine")


def image_recipe(manifest: dict, image: str, folder: Path) -> dict:
    """The recipe of ``image`` in a shard set (its manifest): ``mel``'s, or ``mel_fine``'s from the extras.

    Raises
    ------
    ShardError
        If the shard set holds no such image, naming the folder and the fix.
    """
    if image not in IMAGES:
        raise ValueError(f"image must be one of {IMAGES}, got {image!r}")
    if image == "mel":
        return manifest["recipe"]
    about = manifest.get("extras", {}).get(image)
    if about is None:
        raise ShardError(
            f"{folder}: this shard set holds no {image} image. Make one that does: "
            f"`make features RECIPES=reference,fine SHARDS=...` (or --recipes reference,fine)."
        )
    return about["recipe"]


def _check_shard(path: Path, entry: dict, manifest: dict, verify: bool, image: str) -> shards.ShardContents:
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
    recipe = image_recipe(manifest, image, path.parent)
    shape = contents.mel_shape if image == "mel" else contents.extra_shapes.get(image, (0, 0, 0))
    expected = (recipe.get("n_mels", 128), recipe.get("n_frames", 128))
    if contents.num_tracks and tuple(shape[1:]) != expected:
        raise ShardError(f"{path}: {image} images are {tuple(shape[1:])}, expected {expected}. {fix}")
    if contents.extras != manifest.get("extras", {}):
        raise ShardError(f"{path}: its extra datasets {contents.extras} differ from the manifest's. {fix}")
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
    image : {"mel", "mel_fine"}
        Which image of the shards to read (default ``mel``, the 128 x 128 reference image).
    crop_frames : int, optional
        The length of the crops a ``(B, 2)`` index batch asks for (see the module doc).
    target : {"label", "genres"}
        What a sample's ``y`` is: its top-level class (default), or its multi-hot row over the
        whole genre table (a shard set made with ``--target genres_all``; ShardError otherwise).

    Attributes
    ----------
    labels : np.ndarray, shape (N,), int64
        Top-level class; -1 (``shards.NO_LABEL``) for a track without one (genres_all sets).
    genres : np.ndarray, shape (N, G), uint8, or None
        Multi-hot genre rows (target ``genres``).
    genre_table : list of dict or None
        The G genres (``id``, ``title``, ``parent``, ``top_level``), column order (target ``genres``).
    targets : np.ndarray
        ``labels`` or ``genres``: what :meth:`gather` hands out as ``y``.
    track_ids : np.ndarray, shape (N,), int64
    class_names : list of str
    recipe : dict
        The recipe of the image read (``mel``'s, or the fine one's).
    height, width : int
        Mel bands and frames of one image.

    Images come out raw (log-mel dB) as float32; standardisation is :mod:`train.normalization`'s,
    applied on the device by :class:`train.inference.BatchSource`.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        split: str,
        *,
        verify: bool = True,
        image: str = "mel",
        crop_frames: int | None = None,
        target: str = "label",
    ):
        self.folder = Path(folder)
        self.split = split
        self.image = image
        self.manifest = shards.read_manifest(self.folder)
        self.class_names = list(self.manifest["class_names"])
        self.recipe = image_recipe(self.manifest, image, self.folder)
        self.height = int(self.recipe.get("n_mels", 128))
        self.width = int(self.recipe.get("n_frames", 128))
        if crop_frames is not None:
            check_crop(self.width, crop_frames)
        self.crop_frames = crop_frames
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.genre_table = None
        if target == "genres":
            if "genres" not in self.manifest.get("extras", {}):
                raise ShardError(
                    f"{self.folder}: this shard set has no multi-hot genres (made without --target "
                    f"genres_all): make one with `make features TARGET=genres_all`, or train --task single"
                )
            self.genre_table = self.manifest["extras"]["genres"]["genre_table"]
        entries = shards.shard_entries(self.manifest, split)
        infos, labels, track_ids, genres, start = [], [], [], [], 0
        for entry in entries:
            path = self.folder / entry["name"]
            contents = _check_shard(path, entry, self.manifest, verify, image)
            layout = shards.data_layout(path, image) if contents.num_tracks else None
            infos.append(ShardInfo(path, contents.num_tracks, start, layout))
            labels.append(contents.label.astype(np.int64))
            track_ids.append(contents.track_id.astype(np.int64))
            if self.genre_table is not None:
                genres.append(shards.read_extra(path, "genres"))
            start += contents.num_tracks
        self.shards = infos
        self.labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self.track_ids = np.concatenate(track_ids) if track_ids else np.zeros(0, np.int64)
        self.genres = None
        if self.genre_table is not None:
            self.genres = np.concatenate(genres) if genres else np.zeros((0, len(self.genre_table)), np.uint8)
        self.targets = self.labels if self.genres is None else self.genres
        self._starts = np.array([s.start for s in infos], dtype=np.int64)
        self._ram: np.ndarray | None = None
        self._open_pid: int | None = None
        self._readers: dict[int, object] = {}
        self._crop_views: dict = {}  # shard (or "ram") -> its strided view for crops (_crop_view)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    # -- per-process readers ------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_readers"], state["_crop_views"] = {}, {}
        state["_open_pid"] = None
        return state

    def _reader(self, shard: int):
        """The open memmap (or h5py dataset) of shard ``shard`` in this process."""
        if self._open_pid != os.getpid():
            self._readers, self._crop_views = {}, {}  # inherited over fork: never reuse
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
                    reader = h5py.File(info.path, "r", rdcc_nbytes=1 << 16)[self.image]
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
        self._readers, self._crop_views = {}, {}

    # -- access ---------------------------------------------------------------

    def _read(self, indices: np.ndarray) -> np.ndarray:
        """Raw images of sorted ``indices``, float32, shape (B, H, W)."""
        out = np.empty((len(indices), self.height, self.width), dtype=np.float32)
        if len(indices) == 0:
            return out
        if self._ram is not None:
            self._copy(self._ram, indices, out)
            return out
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        local_all = indices - self._starts[shard_of]
        bounds = (np.flatnonzero(np.diff(shard_of)) + 1).tolist()
        for lo, hi in zip([0, *bounds], [*bounds, len(indices)], strict=True):
            self._copy(self._reader(int(shard_of[lo])), local_all[lo:hi], out[lo:hi])
        return out

    @staticmethod
    def _copy(reader, local: np.ndarray, out: np.ndarray) -> None:
        """``out[k] = reader[local[k]]``, reader a memmap view, an array in RAM or an h5py dataset."""
        if isinstance(reader, np.ndarray) and reader.dtype == out.dtype:
            # mode="clip": indices are checked in gather; "raise" would buffer the output
            reader.take(local, axis=0, out=out, mode="clip")
        elif isinstance(reader, np.ndarray):  # float16 (mel_fine): gather, then widen
            out[...] = reader[local]
        else:
            unique, inverse = np.unique(local, return_inverse=True)
            out[...] = reader[unique][inverse]

    def _read_crops(self, indices: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Crops of ``crop_frames`` frames from ``starts`` (B,) of the sorted images ``indices``
        (B,): float32, shape (B, H, crop_frames).

        A crop is one item of a strided view of the shard's map whose first axis is the offset of
        the crop's first element (:meth:`_crop_view`), so each shard's crops are one integer gather.
        """
        out = np.empty((len(indices), self.height, self.crop_frames), dtype=np.float32)
        if len(indices) == 0:
            return out
        offsets = starts.copy()
        if self._ram is not None:
            offsets += indices * (self.height * self.width)
            out[...] = self._crop_view("ram", self._ram)[offsets]
            return out
        shard_of = np.searchsorted(self._starts, indices, side="right") - 1
        offsets += (indices - self._starts[shard_of]) * (self.height * self.width)
        bounds = (np.flatnonzero(np.diff(shard_of)) + 1).tolist()
        for lo, hi in zip([0, *bounds], [*bounds, len(indices)], strict=True):
            shard = int(shard_of[lo])
            reader = self._reader(shard)
            if isinstance(reader, np.ndarray):
                out[lo:hi] = self._crop_view(shard, reader)[offsets[lo:hi]]
            else:  # an h5py dataset: one read per crop
                local = (indices[lo:hi] - self._starts[shard]).tolist()
                for row, i, s in zip(range(lo, hi), local, starts[lo:hi].tolist(), strict=True):
                    out[row] = reader[i, :, s : s + self.crop_frames]
        return out

    def _crop_view(self, key, reader: np.ndarray) -> np.ndarray:
        """A read-only view of C-contiguous images ``reader`` (N, H, W), shape (N*H*W - span + 1, H,
        crop): item ``o`` is the (H, crop) block whose first element is element ``o`` of the flat
        array, so the crop of image i from frame s is item ``i*H*W + s`` (cached per ``key``)."""
        view = self._crop_views.get(key)
        if view is None:
            flat = np.ascontiguousarray(reader).reshape(-1)
            step = flat.strides[0]
            span = (self.height - 1) * self.width + self.crop_frames
            view = np.lib.stride_tricks.as_strided(
                flat,
                shape=(flat.size - span + 1, self.height, self.crop_frames),
                strides=(step, self.width * step, step),
                writeable=False,
            )
            self._crop_views[key] = view
        return view

    def gather(self, indices, starts=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch in one call.

        Parameters
        ----------
        indices : array-like of int, shape (B,)
            Any order, repeats allowed; sorted input skips the reordering.
        starts : array-like of int, shape (B,), optional
            Crop each sample to ``crop_frames`` frames from these start frames.

        Returns
        -------
        x : torch.Tensor, shape (B, 1, H, W) or (B, 1, H, crop_frames), float32 (raw log-mel)
        y : torch.Tensor, shape (B,), int64 (target ``label``), or (B, G) uint8 (``genres``)
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < -n or high >= n:
                raise IndexError(f"index out of range for a dataset of {n} samples")
            if low < 0:
                indices = np.where(indices < 0, indices + n, indices)
        if starts is not None:
            starts = self._check_starts(starts, indices.size)
        if indices.size > 1 and not (indices[1:] >= indices[:-1]).all():
            order = np.argsort(indices, kind="stable")
            images = np.empty(
                (len(indices), self.height, self.width if starts is None else self.crop_frames), np.float32
            )
            images[order] = (
                self._read(indices[order])
                if starts is None
                else self._read_crops(indices[order], starts[order])
            )
        else:
            images = self._read(indices) if starts is None else self._read_crops(indices, starts)
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(self.targets[indices])

    def _check_starts(self, starts, count: int) -> np.ndarray:
        if self.crop_frames is None:
            raise ValueError("crop starts given, but this dataset was opened without crop_frames")
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if starts.size != count:
            raise ValueError(f"{starts.size} crop starts for {count} indices")
        if starts.size and (starts.min() < 0 or starts.max() > self.width - self.crop_frames):
            raise IndexError(f"crop starts must lie in [0, {self.width - self.crop_frames}]")
        return starts

    def __getitem__(self, index):
        """``dataset[i]`` -> (x (1, H, W) float32, y int64 scalar); ``dataset[array]`` -> a batch as
        :meth:`gather`; ``dataset[pairs]`` with pairs (B, 2) of (index, crop start) -> a batch of crops."""
        if np.ndim(index) == 0:
            x, y = self.gather([int(index)])
            return x[0], y[0]
        if np.ndim(index) == 2:
            pairs = np.asarray(index, dtype=np.int64)
            return self.gather(pairs[:, 0], pairs[:, 1])
        return self.gather(index)

    # -- whole-split operations ----------------------------------------------

    def preload(self) -> None:
        """Copy every image of the split into one array in RAM, shape (N, H, W), in the stored dtype."""
        ram = np.empty((len(self), self.height, self.width), dtype=self._stored_dtype())
        for start in range(0, len(self), 256):
            ram[start : start + 256] = self._read(np.arange(start, min(start + 256, len(self))))
        self._ram = ram
        self.close()

    def _stored_dtype(self) -> np.dtype:
        return (
            np.dtype(shards.EXTRAS[self.image].dtype) if self.image in shards.EXTRAS else np.dtype(np.float32)
        )

    def raw_array(self) -> np.ndarray:
        """All images, not standardised: shape (N, H, W) float32 (a copy)."""
        return self._read(np.arange(len(self), dtype=np.int64))

    def class_counts(self) -> np.ndarray:
        """Samples per class, shape (num_classes,), int64 (tracks without a top-level genre not counted)."""
        return np.bincount(self.labels[self.labels >= 0], minlength=self.num_classes).astype(np.int64)
