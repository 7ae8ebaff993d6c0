"""Whole-track windows: which excerpts of a file are scored, cut from a decoded stream.

The plan (a pure function of the file's length)
-----------------------------------------------
A window is ``window = int(recipe.duration_s * rate)`` samples, the excerpt the
features stage turns into one image (29.5 s for the reference recipe). Windows
start every ``hop`` samples (default half a window) while they fit in the file;
if the last of them ends before the file does, one more window ends exactly at
the file's end, so every sample is in at least one window and every window is
full length. A file no longer than one window is one window from its start,
which the recipe's short-clip policy pads with silence (or rejects when shorter
than ``recipe.min_duration_s``).

Examples for a 29.5 s window and a 14.75 s hop: a 20 s file has one window at
0 s; 29.5 s one at 0 s; 30 s two, at 0 and 0.5 s; 60 s four, at 0, 14.75, 29.5
and 30.5 s.

Cutting (streamed)
------------------
:func:`cut_windows` takes the decoded samples as a sequence of blocks and yields
the planned windows as they become complete, keeping at most one window plus one
block in memory, so memory does not depend on the file's length. It needs no
length up front (a decoder's header length can be an estimate): the tail window
is placed when the stream ends. Its windows are exactly
``samples[:, start:start + window]`` for the starts of :func:`window_starts`.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from preprocess.recipe import Recipe


def window_length(recipe: Recipe, rate: int) -> int:
    """Samples per window at the native ``rate``: the features stage's excerpt length."""
    return int(recipe.duration_s * rate)


def hop_length(hop_s: float, rate: int) -> int:
    """Samples between window starts for a hop of ``hop_s`` seconds (at least 1)."""
    if not hop_s > 0:
        raise ValueError(f"the hop must be a positive number of seconds, got {hop_s}")
    return max(1, int(round(hop_s * rate)))


def window_starts(n_samples: int, window: int, hop: int) -> list[int]:
    """Start offsets (in samples) of the windows that cover a file.

    Parameters
    ----------
    n_samples : int
        Length of the file in samples (>= 0).
    window, hop : int
        Window length and hop in samples (> 0).

    Returns
    -------
    list of int
        ``[0]`` when ``n_samples <= window`` (one, possibly short, window; ``[]``
        for an empty file); else ``0, hop, 2*hop, ...`` while a window fits, plus
        ``n_samples - window`` when those end before the file does.
    """
    if window < 1 or hop < 1 or n_samples < 0:
        raise ValueError(f"need window >= 1, hop >= 1, n_samples >= 0; got {window}, {hop}, {n_samples}")
    if n_samples == 0:
        return []
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return starts


def cut_windows(blocks: Iterable[np.ndarray], window: int, hop: int,
                first_only: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """The planned windows of a stream of sample blocks, in order.

    Parameters
    ----------
    blocks : iterable of np.ndarray, each shape (n_channels, n_i)
        Consecutive decoded samples (any block sizes, n_i >= 0).
    window, hop : int
        Window length and hop in samples.
    first_only : bool
        Stop after the first window (and stop reading ``blocks``).

    Yields
    ------
    (int, np.ndarray of shape (n_channels, window))
        Start offset and the samples ``all[:, start:start + window]``; the single
        window of a file shorter than ``window`` is the whole file.
    """
    pieces: list[np.ndarray] = []  # consecutive blocks, the first starting at `offset`
    offset = 0  # absolute index of pieces[0][:, 0]
    end = 0  # absolute index one past the last sample received
    next_start = 0
    last_end = 0  # end of the last window yielded

    def take(start: int, stop: int) -> np.ndarray:
        parts, pos = [], offset
        for piece in pieces:
            lo, hi = max(start - pos, 0), min(stop - pos, piece.shape[1])
            if hi > lo:
                parts.append(piece[:, lo:hi])
            pos += piece.shape[1]
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts, axis=1)

    for block in blocks:
        if block.shape[1] == 0:
            continue
        pieces.append(block)
        end += block.shape[1]
        while next_start + window <= end:
            yield next_start, take(next_start, next_start + window)
            if first_only:
                return
            last_end = next_start + window
            next_start += hop
        # Keep what a later window, or the tail window, can still need.
        keep_from = min(next_start, end - window)
        while pieces and offset + pieces[0].shape[1] <= keep_from:
            offset += pieces.pop(0).shape[1]
    if end == 0:
        return
    if last_end == 0:  # no full window: the file is shorter than one
        yield 0, take(0, end)
    elif last_end < end:
        yield end - window, take(end - window, end)
