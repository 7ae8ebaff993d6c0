"""Whole-track windows: which excerpts of a file are scored, cut from a decoded stream.

The plan (a pure function of the file's length)
-----------------------------------------------
A window is ``window = int(recipe.duration_s * rate)`` samples, the excerpt the
features stage turns into one image (29.5 s for the reference recipe). Windows
start every ``hop`` samples (default half a window) while they fit in the file;
if the last of them ends before the file does, one more window covers the end of
the file, so every sample is in at least one window. A file no longer than one
window is one window from its start, which the recipe's short-clip policy pads
with silence (or rejects when shorter than ``recipe.min_duration_s``).

Window starts lie on the recipe's frame grid (:func:`window_plan`): when the recipe
makes its image at the file's own sample rate (no resampling: FMA's 44.1 kHz and
48 kHz, and 22.05 kHz), the hop is a whole number of spectrogram frames (``--hop``
in seconds is rounded to whole frames; the default, half a window, is 64 frames of
the reference recipe, 14.75 s at 44.1 kHz), and the window that covers the end
starts at the first frame at or after ``n - window``: it is full length when
``n - window`` falls on a frame, otherwise it ends less than one frame (0.23 s of
the reference recipe) short of a full window and the short-clip policy pads that
sliver with silence, as the features stage does for a short clip. When the recipe
resamples, the grid is one sample: the hop is rounded to whole samples and the end
window starts at exactly ``n - window``.

Examples for the reference recipe at 44.1 kHz and the default hop (64 frames of
10,164 samples): a 20 s file has one window at 0 s; 29.5 s one at 0 s; 30 s two,
at 0 and 0.69 s; 60 s four, at 0, 14.75, 29.50 and 30.65 s.

Cutting (streamed)
------------------
:func:`window_spans` takes the decoded samples as a sequence of blocks and gives
the planned windows as they become complete, keeping at most one window plus one
block in memory (:class:`SampleBuffer`), so memory does not depend on the file's
length. It needs no length up front (a decoder's header length can be an
estimate): the end window is placed when the stream ends. :func:`cut_windows`
gives each window as an array, exactly ``samples[:, start:start + window]`` for the
starts of :func:`window_starts`.

Shared frames
-------------
Frame ``j`` of a window starting at sample ``s`` covers ``[s + (j-1) hop, s + (j+1) hop)``
(``n_fft`` = 2 hop), so when two windows start a whole number of frames apart, all the
frames of one that lie wholly inside it are frames of the file's own frame grid, and those
it shares with the other are the same numbers. :class:`FrameStream` keeps the mel power
of the frames one window shares with the next and computes only the new ones and the
window's edge frames (the first, and the last one or two, which reach into the window's
zero padding) from just the samples they cover, then converts to dB with the window's own
``top_db`` floor; the samples are checked for NaN once as they arrive and for silence on
views, without copying the window. Each window's image is the features stage's image of its
excerpt, bit for bit (:func:`preprocess.recipe.mel_power`; ``tests/test_predict.py``), at
the cost of imaging each second of audio about once, not twice, at the default hop.
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
    is_quiet,
    silence_skip,
    warm_up,
    with_decoder_messages,
)
from preprocess.recipe import NOT_FINITE, Recipe, downmix, mel_power, power_to_db

#: The sample rate the predict header describes the hop at (FMA's usual rate).
NOMINAL_RATE = 44100


def window_length(recipe: Recipe, rate: int) -> int:
    """Samples per window at the native ``rate``: the features stage's excerpt length."""
    return int(recipe.duration_s * rate)


def frame_grid(recipe: Recipe, rate: int) -> int:
    """Samples between the points a window may start at, at the native ``rate``.

    The recipe's frame hop when it makes its image at ``rate`` itself (then windows that start
    on this grid share their frames: :class:`FrameStream`); 1 when it resamples first.
    """
    return recipe.hop_length(rate) if recipe.output_rate(rate) == rate else 1


def default_hop_s(recipe: Recipe, whole_window: bool = False) -> float:
    """The default hop in seconds: half a window, or a whole one (``whole_window``)."""
    return recipe.duration_s if whole_window else recipe.duration_s / 2


@dataclass(frozen=True)
class WindowPlan:
    """How one file is cut, in samples at its native rate.

    Attributes
    ----------
    window : int
        Samples per window (:func:`window_length`).
    hop : int
        Samples between window starts, a multiple of ``grid``.
    grid : int
        :func:`frame_grid`: every window starts at a multiple of it.
    """

    window: int
    hop: int
    grid: int

    @property
    def hop_frames(self) -> int:
        """The hop in frames of the grid (in samples when the grid is one sample)."""
        return self.hop // self.grid


def window_plan(recipe: Recipe, rate: int, hop_s: float | None = None) -> WindowPlan:
    """The windows of a file at ``rate``: ``hop_s`` seconds (default half a window) rounded to
    whole frames of :func:`frame_grid` (at least one). A hop of at most a window is never
    rounded past the window's end, so that windows one window apart leave no gap.
    """
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    hop_s = default_hop_s(recipe) if hop_s is None else hop_s
    if not hop_s > 0:
        raise ValueError(f"the hop must be a positive number of seconds, got {hop_s}")
    window, grid = window_length(recipe, rate), frame_grid(recipe, rate)
    steps = max(1, int(round(hop_s * rate / grid)))
    if steps * grid > window and hop_s <= recipe.duration_s:
        steps = max(1, window // grid)
    return WindowPlan(window=window, hop=steps * grid, grid=grid)


def describe_hop(recipe: Recipe, hop_s: float | None = None, rate: int = NOMINAL_RATE) -> str:
    """``windows of 29.5 s every 14.75 s (64 frames)`` for humans (the hop as cut at ``rate``)."""
    plan = window_plan(recipe, rate, hop_s)
    frames = f" ({plan.hop_frames} frames)" if plan.grid > 1 else ""
    return f"windows of {recipe.duration_s:g} s every {plan.hop / rate:.2f} s{frames}"


def window_starts(n_samples: int, window: int, hop: int, grid: int = 1) -> list[int]:
    """Start offsets (in samples) of the windows that cover a file.

    Parameters
    ----------
    n_samples : int
        Length of the file in samples (>= 0).
    window, hop : int
        Window length and hop in samples (> 0).
    grid : int
        The end window starts on a multiple of ``grid`` (``hop`` should be one too).

    Returns
    -------
    list of int
        ``[0]`` when ``n_samples <= window`` (one, possibly short, window; ``[]``
        for an empty file); else ``0, hop, 2*hop, ...`` while a window fits, plus, when
        those end before the file does, the first multiple of ``grid`` at or after
        ``n_samples - window`` (that window ends at the file's end, less than ``grid``
        samples short of a full window).
    """
    if window < 1 or hop < 1 or grid < 1 or n_samples < 0:
        raise ValueError(
            f"need window >= 1, hop >= 1, grid >= 1, n_samples >= 0; got {window}, {hop}, {grid}, {n_samples}"
        )
    if n_samples == 0:
        return []
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(end_window_start(n_samples, window, grid))
    return starts


def end_window_start(n_samples: int, window: int, grid: int) -> int:
    """The first multiple of ``grid`` at or after ``n_samples - window``."""
    return -(-(n_samples - window) // grid) * grid


class SampleBuffer:
    """Consecutive blocks of a stream, shape (n_channels, n_i) each, holding samples ``offset`` to
    ``end`` of it: what the windows still to come need, and nothing older."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []
        self.offset = 0  # the stream's index of blocks[0][:, 0]
        self.end = 0  # one past the last sample received

    def push(self, block: np.ndarray) -> None:
        """Append the next block (n_channels, n)."""
        self.blocks.append(block)
        self.end += block.shape[1]

    def parts(self, start: int, stop: int) -> list[np.ndarray]:
        """Views (n_channels, n_i) of the blocks that together are samples ``[start, stop)``
        (``offset <= start``, ``stop <= end``)."""
        if start < self.offset or stop > self.end:
            raise ValueError(f"samples [{start}, {stop}) are not all in [{self.offset}, {self.end})")
        parts, position = [], self.offset
        for block in self.blocks:
            lo, hi = max(start - position, 0), min(stop - position, block.shape[1])
            if hi > lo:
                parts.append(block[:, lo:hi])
            position += block.shape[1]
        return parts

    def take(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` as one new array (n_channels, stop - start)."""
        parts = self.parts(start, stop)
        if not parts:
            return np.zeros((self.blocks[0].shape[0] if self.blocks else 1, 0), np.float32)
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts, axis=1)

    def drop_before(self, position: int) -> None:
        """Forget the blocks that end at or before ``position``."""
        while self.blocks and self.offset + self.blocks[0].shape[1] <= position:
            self.offset += self.blocks.pop(0).shape[1]


def window_spans(
    blocks: Iterable[np.ndarray], window: int, hop: int, first_only: bool = False, grid: int = 1
) -> Iterator[tuple[int, int, SampleBuffer]]:
    """The planned windows of a stream of sample blocks, in order, as soon as their samples are in.

    Parameters
    ----------
    blocks : iterable of np.ndarray, each shape (n_channels, n_i)
        Consecutive decoded samples (any block sizes, n_i >= 0).
    window, hop, grid : int
        Window length, hop and grid in samples (as :func:`window_starts`).
    first_only : bool
        Stop after the first window (and stop reading ``blocks``).

    Yields
    ------
    (int, int, SampleBuffer)
        The window's samples ``[start, stop)`` of the stream, and the buffer holding them (at
        most a window and a block; read it before asking for the next window). The single window
        of a file shorter than ``window`` is the whole file, and the end window is up to
        ``grid - 1`` samples short.
    """
    buffer = SampleBuffer()
    next_start = 0
    last_end = 0  # end of the last window yielded
    for block in blocks:
        if block.shape[1] == 0:
            continue
        buffer.push(block)
        while next_start + window <= buffer.end:
            yield next_start, next_start + window, buffer
            if first_only:
                return
            last_end = next_start + window
            next_start += hop
        # Keep what a later window, or the end window, can still need.
        buffer.drop_before(min(next_start, buffer.end - window))
    if buffer.end == 0:
        return
    if last_end == 0:  # no full window: the file is shorter than one
        yield 0, buffer.end, buffer
    elif last_end < buffer.end:
        yield end_window_start(buffer.end, window, grid), buffer.end, buffer


def cut_windows(
    blocks: Iterable[np.ndarray], window: int, hop: int, first_only: bool = False, grid: int = 1
) -> Iterator[tuple[int, np.ndarray]]:
    """The planned windows of a stream of sample blocks, in order, as arrays (see :func:`window_spans`).

    Yields
    ------
    (int, np.ndarray of shape (n_channels, <= window))
        Start offset and the samples ``all[:, start:start + window]``.
    """
    for start, stop, buffer in window_spans(blocks, window, hop, first_only, grid):
        yield start, buffer.take(start, stop)


class FrameStream:
    """The images of one file's windows made from the file's frame grid (see the module doc).

    Each frame that lies wholly inside the file is transformed once, when the first window that
    holds it is imaged, and kept while the next window shares it; each window adds only its edge
    frames, computed on its own excerpt. Samples are checked as they arrive (:meth:`watch`), so a
    window's image needs no copy of its excerpt: :meth:`image` gives what
    :func:`preprocess.audio.image_of` gives for the excerpt, the same image and the same failures.

    Parameters
    ----------
    recipe : Recipe
    rate : int
        The file's sample rate; the recipe must make its image at that rate (:func:`frame_grid`).
    """

    def __init__(self, recipe: Recipe, rate: int):
        if recipe.output_rate(rate) != rate:
            raise ValueError(f"recipe {recipe.name!r} resamples {rate} Hz: its windows share no frames")
        self.recipe, self.rate, self.hop = recipe, rate, recipe.hop_length(rate)
        self.first = 0  # the file's frame index of columns[:, 0]
        self.columns: np.ndarray | None = None  # (n_mels, C) mel power of the frames kept
        self.first_bad: int | None = None  # the first NaN or infinite sample seen

    def watch(self, mono: np.ndarray, at: int) -> None:
        """Check a block of the down-mixed stream (1, n) that starts at sample ``at``."""
        if self.first_bad is None:
            bad = ~np.isfinite(mono[0])
            if bad.any():
                self.first_bad = at + int(bad.argmax())

    def image(self, start: int, stop: int, buffer: SampleBuffer) -> np.ndarray:
        """The image of the down-mixed samples ``[start, stop)`` in ``buffer`` (``start`` on the frame
        grid, ``stop - start`` from ``recipe.min_duration_s`` to a window), shape (n_mels, n_frames)
        float32: equal to ``image_of(buffer.take(start, stop), rate, recipe).image``.

        Raises
        ------
        TrackFailure
            ``bad audio: ...`` (a NaN or infinite sample in the window) or ``digital silence``,
            as :func:`preprocess.audio.image_of` says them.
        """
        length, window = stop - start, window_length(self.recipe, self.rate)
        if start % self.hop or not self.recipe.min_duration_s * self.rate <= length <= window:
            raise ValueError(f"samples [{start}, {stop}) are not a window on the frame grid of {self.hop}")
        if self.first_bad is not None and start <= self.first_bad < stop:
            raise TrackFailure(f"bad audio: {NOT_FINITE}")
        if is_quiet(part[0] for part in buffer.parts(start + silence_skip(self.rate), stop)):
            raise TrackFailure(SILENCE)
        n_frames, frame = self.recipe.n_frames, start // self.hop
        inner = min(length // self.hop - 1, n_frames - 1)  # frames 1..inner: the file's
        lo = hi = 1  # frames [lo, hi) of this window taken from the ones kept
        if self.columns is not None and inner >= 1:
            lo = max(1, self.first - frame)
            hi = max(lo, min(inner + 1, self.first + self.columns.shape[1] - frame))
        power = np.empty((self.recipe.n_mels, n_frames), dtype=np.float32)
        if hi > lo:
            power[:, lo:hi] = self.columns[:, lo + frame - self.first : hi + frame - self.first]
        power[:, :lo] = self._frames(buffer, start, stop, 0, lo)
        power[:, hi:] = self._frames(buffer, start, stop, hi, n_frames)
        self.first, self.columns = frame + 1, (power[:, 1 : inner + 1] if inner >= 1 else None)
        return power_to_db(power, self.recipe)

    def _frames(self, buffer: SampleBuffer, start: int, stop: int, first: int, end: int) -> np.ndarray:
        """Mel power (n_mels, end - first) of frames ``first .. end - 1`` of the excerpt
        ``[start, stop)``, from only the samples they cover (zeros past the excerpt's ends)."""
        skip = max(first - 1, 0)  # frames the samples taken begin after: frame k is their k - skip
        lo, hi = start + skip * self.hop, min(stop, start + end * self.hop)
        # Past the excerpt's end a frame is all zeros: one zero sample stands for the padding.
        y = buffer.take(lo, hi)[0] if hi > lo else np.zeros(1, np.float32)
        return mel_power(y, self.rate, self.recipe, first - skip, end - first)


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
        Wall time spent decoding and making images (the down-mix included).
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


def _mono_blocks(
    reader: AudioReader, frames: int, clock: dict[str, float], stream: FrameStream | None
) -> Iterator[np.ndarray]:
    """``reader``'s blocks down-mixed, shape (1, n) each (and watched by ``stream``); decoding and
    down-mix timed into ``clock``."""
    blocks, at = reader.blocks(frames), 0
    while True:
        t0 = time.perf_counter()
        block = next(blocks, None)
        t1 = time.perf_counter()
        clock["decode"] += t1 - t0
        if block is None:
            return
        mono = downmix(block)[None]
        if stream is not None:
            stream.watch(mono, at)
        at += mono.shape[1]
        clock["image"] += time.perf_counter() - t1
        yield mono


def window_images(
    source: Source,
    recipe: Recipe,
    hop_s: float | None = None,
    first_only: bool = False,
    share_frames: bool = True,
) -> WindowImages:
    """Decode a file window by window and make each window's image (streamed: memory bounded).

    Parameters
    ----------
    source : path or binary file object
    recipe : Recipe
    hop_s : float, optional
        Seconds between window starts, rounded to whole frames (:func:`window_plan`);
        default half of ``recipe.duration_s``.
    first_only : bool
        Only the first window (what the features stage stores for a track).
    share_frames : bool
        Make the images from the file's frame grid (:class:`FrameStream`; the same images). False
        images every window on its own, as before frames were shared (``bench/predict.py`` compares).

    Returns
    -------
    WindowImages

    Raises
    ------
    TrackFailure
        The file cannot be decoded, is too short for the recipe, or every window is
        digital silence; the reason includes what the decoder said about the file.
    """
    cpu_start = time.process_time()
    starts, images, silent = [], [], 0
    clock, end = {"decode": 0.0, "image": 0.0}, 0
    with captured_stderr() as said:
        try:
            with AudioReader(source) as reader:
                rate = reader.rate
                plan = window_plan(recipe, rate, hop_s)
                shared = share_frames and plan.grid > 1 and not first_only
                stream = FrameStream(recipe, rate) if shared else None
                block = plan.window if first_only else min(plan.hop, plan.window)
                blocks = _mono_blocks(reader, block, clock, stream)
                for start, stop, buffer in window_spans(blocks, plan.window, plan.hop, first_only, plan.grid):
                    t0 = time.perf_counter()
                    try:
                        if stream is not None and stop - start >= recipe.min_duration_s * rate:
                            images.append(stream.image(start, stop, buffer))
                        else:
                            images.append(image_of(buffer.take(start, stop), rate, recipe).image)
                        starts.append(start / rate)
                    except TrackFailure as exc:
                        if str(exc) != SILENCE:
                            raise
                        silent += 1
                    clock["image"] += time.perf_counter() - t0
                    end = max(end, stop)
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
        decode_s=clock["decode"],
        image_s=clock["image"],
        cpu_s=time.process_time() - cpu_start,
    )


def prepare(recipe: dict) -> None:
    """A decoding process's one-time set-up for ``recipe`` (a plain dict), before its first timed
    file (:func:`preprocess.audio.warm_up`)."""
    warm_up(Recipe.from_dict(recipe))


def file_window_images(
    path: str | os.PathLike,
    recipe: dict,
    hop_s: float | None = None,
    first_only: bool = False,
    share_frames: bool = True,
) -> tuple[WindowImages | None, str | None]:
    """:func:`window_images` for a process pool: ``(images, None)`` or ``(None, reason)``.

    ``recipe`` is the plain dict stored in checkpoints and ONNX metadata.
    """
    from preprocess.supervise import inject_fault

    inject_fault(Path(path).stem)  # TEST ONLY: FMA_GENRE_TEST_FAULTS; nothing happens when it is unset
    try:
        return window_images(path, Recipe.from_dict(recipe), hop_s, first_only, share_frames), None
    except TrackFailure as exc:
        return None, str(exc)
