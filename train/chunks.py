"""Short chunks of an image: random training crops and the chunks a clip is scored by.

A model made for chunks trains on random crops of ``crop_frames`` frames of each image (a new
crop every epoch, :func:`crop_starts`) and scores a whole image as the mean of its chunks'
probabilities (:func:`chunk_starts` says which chunks; :func:`split_chunks` cuts a batch).
With ``crop_frames`` equal to the image's width there is one chunk, the whole image: the
128 x 128 reference image is scored exactly as before.

Pure functions of their arguments (crops of ``(seed, epoch)``), so a resumed run draws the
crops an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch


def check_crop(width: int, crop_frames: int) -> None:
    """ValueError unless ``1 <= crop_frames <= width`` (a crop must fit in the image)."""
    if not 1 <= crop_frames <= width:
        raise ValueError(f"crop_frames {crop_frames} does not fit images of {width} frames (need 1..{width})")


def chunk_starts(width: int, crop_frames: int) -> np.ndarray:
    """Start frames of the chunks a whole image is scored by.

    Non-overlapping chunks from frame 0, plus one ending at the last frame when those leave a
    remainder, so every frame is in a chunk and every chunk is full length (as whole-track
    windows do: :func:`preprocess.windows.window_starts`).

    Parameters
    ----------
    width : int
        Frames of the image (e.g. 1271 for the fine recipe, 128 for the reference).
    crop_frames : int
        Frames per chunk, ``1 <= crop_frames <= width``.

    Returns
    -------
    np.ndarray, shape (C,), int64
        E.g. ``[0, 128, ..., 1024, 1143]`` (10 chunks) for 1271 and 128; ``[0]`` for 128 and 128.
    """
    check_crop(width, crop_frames)
    starts = list(range(0, width - crop_frames + 1, crop_frames))
    if starts[-1] + crop_frames < width:
        starts.append(width - crop_frames)
    return np.asarray(starts, dtype=np.int64)


def crop_starts(count: int, width: int, crop_frames: int, seed: int, epoch: int) -> np.ndarray:
    """Random start frames of one epoch's training crops, one per drawn sample.

    Parameters
    ----------
    count : int
        Samples drawn in the epoch (the length of its order).
    width, crop_frames : int
        Image width and crop length in frames.
    seed, epoch : int

    Returns
    -------
    np.ndarray, shape (count,), int64, each in ``[0, width - crop_frames]``
    """
    check_crop(width, crop_frames)
    rng = np.random.default_rng([int(seed), int(epoch), 3])
    return rng.integers(0, width - crop_frames + 1, size=count, dtype=np.int64)


def split_chunks(x: torch.Tensor, crop_frames: int) -> tuple[torch.Tensor, int]:
    """Cut a batch of whole images into their scoring chunks.

    Parameters
    ----------
    x : torch.Tensor, shape (B, 1, H, W)
    crop_frames : int

    Returns
    -------
    chunks : torch.Tensor, shape (B * C, 1, H, crop_frames)
        Image b's chunks are rows ``b * C .. b * C + C - 1``, in :func:`chunk_starts` order.
    count : int
        C, the chunks per image.
    """
    starts = chunk_starts(x.shape[-1], crop_frames)
    if len(starts) == 1 and crop_frames == x.shape[-1]:
        return x, 1
    chunks = torch.stack([x[..., s : s + crop_frames] for s in starts.tolist()], dim=1)
    return chunks.reshape(-1, *x.shape[1:-1], crop_frames), len(starts)


def mean_over_chunks(values: torch.Tensor, count: int) -> torch.Tensor:
    """(B * C, D) chunk rows -> (B, D): the mean of each image's C chunks."""
    return values.reshape(-1, count, values.shape[-1]).mean(dim=1)
