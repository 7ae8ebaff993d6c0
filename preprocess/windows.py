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

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from preprocess.audio import (
    SILENCE,
    AudioReader,
    Source,
    TrackFailure,
    captured_stderr,
    image_of,
    warm_up,
    with_decoder_messages,
)
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


def cut_windows(
    blocks: Iterable[np.ndarray], window: int, hop: int, first_only: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
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


@dataclass
class WindowImages:
    """The images of one file's windows, and where the time went.

    Attributes
    ----------
    starts_s : np.ndarray, shape (W,), float64
        Start of each imaged window in seconds (silent windows left out).
    images : np.ndarray, shape (W, n_mels, n_frames), float32
        The features stage's image of each window's excerpt.
    silent : int
        Windows left out as digital silence.
    seconds : float
        Length of the decoded audio.
    decode_s, image_s : float
        Wall time spent decoding and making images.
    cpu_s : float
        CPU time of the process over the whole call.
    """

    starts_s: np.ndarray
    images: np.ndarray
    silent: int
    seconds: float
    decode_s: float
    image_s: float
    cpu_s: float


def _timed(blocks: Iterator[np.ndarray], clock: list[float]) -> Iterator[np.ndarray]:
    """``blocks``, adding the time spent producing each to ``clock[0]``."""
    while True:
        start = time.perf_counter()
        block = next(blocks, None)
        clock[0] += time.perf_counter() - start
        if block is None:
            return
        yield block


def window_images(
    source: Source, recipe: Recipe, hop_s: float | None = None, first_only: bool = False
) -> WindowImages:
    """Decode a file window by window and make each window's image (streamed: memory bounded).

    Parameters
    ----------
    source : path or binary file object
    recipe : Recipe
    hop_s : float, optional
        Seconds between window starts; default half of ``recipe.duration_s``.
    first_only : bool
        Only the first window (what the features stage stores for a track).

    Returns
    -------
    WindowImages

    Raises
    ------
    TrackFailure
        The file cannot be decoded, is too short for the recipe, or every window is
        digital silence; the reason includes what the decoder said about the file.
    """
    hop_s = recipe.duration_s / 2 if hop_s is None else hop_s
    cpu_start = time.process_time()
    starts, images, silent = [], [], 0
    clock, image_s, end = [0.0], 0.0, 0
    with captured_stderr() as said:
        try:
            with AudioReader(source) as reader:
                rate = reader.rate
                window, hop = window_length(recipe, rate), hop_length(hop_s, rate)
                blocks = _timed(reader.blocks(min(hop, window)), clock)
                for start, excerpt in cut_windows(blocks, window, hop, first_only=first_only):
                    t0 = time.perf_counter()
                    try:
                        images.append(image_of(excerpt, rate, recipe).image)
                        starts.append(start / rate)
                    except TrackFailure as exc:
                        if str(exc) != SILENCE:
                            raise
                        silent += 1
                    image_s += time.perf_counter() - t0
                    end = max(end, start + excerpt.shape[1])
            if end == 0:
                raise TrackFailure("cannot decode: no audio frames")
            if not images:
                raise TrackFailure(SILENCE)
        except TrackFailure as exc:
            failure = type(exc)(with_decoder_messages(str(exc), said.text()))
        else:
            failure = None
    if failure is not None:
        raise failure from None
    return WindowImages(
        starts_s=np.asarray(starts, dtype=np.float64),
        images=np.stack(images),
        silent=silent,
        seconds=end / rate,
        decode_s=clock[0],
        image_s=image_s,
        cpu_s=time.process_time() - cpu_start,
    )


def prepare(recipe: dict) -> None:
    """A decoding process's one-time set-up for ``recipe`` (a plain dict), before its first timed
    file (:func:`preprocess.audio.warm_up`)."""
    warm_up(Recipe.from_dict(recipe))


def file_window_images(
    path: str | os.PathLike, recipe: dict, hop_s: float | None = None, first_only: bool = False
) -> tuple[WindowImages | None, str | None]:
    """:func:`window_images` for a process pool: ``(images, None)`` or ``(None, reason)``.

    ``recipe`` is the plain dict stored in checkpoints and ONNX metadata.
    """
    from preprocess.supervise import inject_fault

    inject_fault(Path(path).stem)  # TEST ONLY: FMA_GENRE_TEST_FAULTS; nothing happens when it is unset
    try:
        return window_images(path, Recipe.from_dict(recipe), hop_s, first_only), None
    except TrackFailure as exc:
        return None, str(exc)
