"""Decoding audio (exactly as ``librosa.load`` does), and one file -> one log-mel image.

Decoder
-------
Audio is read with ``soundfile`` (libsndfile 1.1+ with libmpg123 for MP3): the very
reader ``librosa.load`` uses, called the same way (float32 samples, the first
``int(max_seconds * rate)`` frames, no clamping), so the waveform the recipe
transforms is ``librosa.load(path, sr=None, mono=True, duration=29.5)`` sample for
sample. Loud masters whose decoded peaks exceed full scale (inter-sample overshoot)
keep those peaks. Only the frames asked for are decoded: a 60-minute file costs what
a 30 s clip costs. A source is a path or a binary file object (e.g. a zip member read
into ``io.BytesIO``). :class:`AudioReader` reads a stream in consecutive blocks with
bounded memory (``preprocess.windows.cut_windows`` cuts them into whole-track windows).

libmpg123 prints its complaints about damaged files on the process's file descriptor
2. :func:`track_image` captures them (``captured_stderr``) and puts them in the
failure reason instead of on the terminal, in any thread (one capture at a time per
process), so a shard's failure reasons are the same whichever backend made it.

Failure reasons (the strings stored in shards and the manifest)
---------------------------------------------------------------
``missing file``, ``not a regular file``, ``empty file``,
``cannot decode: <decoder message>``, ``too short: 1.2 s < 5 s``,
``digital silence`` (the clip's mono waveform never exceeds one 16-bit step after its
first 0.1 s), ``timed out after 60 s``, ``bad audio: <problem>`` (e.g. NaN samples).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Union

import numpy as np
import soundfile

from preprocess.recipe import Recipe, TooShortError, mel_from_mono, prepare_waveform, same_waveform

#: A path, or a binary file object open for reading (seekable).
Source = Union[str, os.PathLike, BinaryIO]

# A clip is digital silence when its mono waveform stays within one 16-bit step of zero
# after its first SILENCE_SKIP_S (decoders may ring for a frame or two at the start).
SILENCE_PEAK = 2.0**-15
SILENCE_SKIP_S = 0.1
SILENCE_FIRST_LOOK = 4096  # samples looked at first (see is_digital_silence)
#: The failure reason of a clip that is digital silence.
SILENCE = "digital silence"
# Decoder messages kept in a failure reason (the rest is cut).
MAX_MESSAGE_CHARS = 300


class TrackFailure(ValueError):
    """A track that cannot be turned into an image; ``str(exc)`` is the reason."""


class TrackTimeout(TrackFailure):
    """The per-track time limit ran out."""


def _check_source(source: Source) -> Source:
    """The source as soundfile takes it; TrackFailure for a missing, odd or empty file."""
    if hasattr(source, "read"):
        try:
            here = source.tell()
            size = source.seek(0, os.SEEK_END)
            source.seek(here)
        except (OSError, AttributeError, ValueError) as exc:
            raise TrackFailure(f"cannot decode: not a seekable file object ({exc})") from None
        if size == 0:
            raise TrackFailure("empty file")
        return source
    path = Path(source)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise TrackFailure("missing file") from None
    except OSError as exc:
        raise TrackFailure(f"cannot decode: {exc.strerror or exc}") from None
    if not path.is_file():
        raise TrackFailure("not a regular file")
    if stat.st_size == 0:
        raise TrackFailure("empty file")
    return str(path)


def _decoder_error(exc: Exception) -> TrackFailure:
    """A decoder exception as a TrackFailure; the reason never holds an object address."""
    message = getattr(exc, "error_string", None) or str(exc).strip() or type(exc).__name__
    if message.startswith("File does not exist"):  # libsndfile's words when mpg123 finds no frame
        message = "no valid audio frames found"
    return TrackFailure(f"cannot decode: {message.splitlines()[0].strip()}")


class AudioReader:
    """An audio stream open for reading in consecutive blocks, with bounded memory.

    Use as a context manager. Samples are float32 as the decoder gives them (not
    clamped); a block has shape (channels, n) and is a view of a fresh array.

    Parameters
    ----------
    source : path or binary file object

    Attributes
    ----------
    rate : int
        Native sample rate.
    channels : int
    position : int
        Frames read (or skipped) so far.

    Raises
    ------
    TrackFailure
        ``missing file``, ``empty file``, ``not a regular file``, ``cannot decode: ...``.
    """

    def __init__(self, source: Source):
        try:
            self._file = soundfile.SoundFile(_check_source(source))
        except (soundfile.SoundFileError, RuntimeError, TypeError) as exc:
            raise _decoder_error(exc) from None
        self.rate = int(self._file.samplerate)
        self.channels = int(self._file.channels)
        self.position = 0
        if self.rate <= 0 or self.channels <= 0:
            self.close()
            raise TrackFailure(f"cannot decode: {self.channels} channels at {self.rate} Hz")

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read(self, frames: int) -> np.ndarray:
        """The next ``frames`` frames (fewer at the end of the stream).

        Returns
        -------
        np.ndarray, shape (channels, n), float32, n <= frames
        """
        if frames < 0:
            raise ValueError(f"frames must be >= 0, got {frames}")
        try:
            block = self._file.read(frames, dtype="float32", always_2d=True)
        except (soundfile.SoundFileError, RuntimeError) as exc:
            raise _decoder_error(exc) from None
        self.position += block.shape[0]
        return block.T

    def skip(self, frames: int, block: int = 1 << 16) -> int:
        """Decode and drop ``frames`` frames (sample-exact, unlike a seek); returns the number dropped."""
        dropped = 0
        while dropped < frames:
            n = self.read(min(block, frames - dropped)).shape[1]
            if n == 0:
                break
            dropped += n
        return dropped

    def blocks(self, frames: int) -> Iterator[np.ndarray]:
        """Consecutive blocks of ``frames`` frames (the last one may be shorter) until the end."""
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        while True:
            block = self.read(frames)
            if block.shape[1] == 0:
                return
            yield block
            if block.shape[1] < frames:
                return


def decode(source: Source, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode a file to float samples at its native rate, as ``librosa.load(sr=None, mono=False)``.

    Parameters
    ----------
    source : path or binary file object
    max_seconds : float, optional
        Decode only the first ``int(max_seconds * rate)`` frames (librosa's ``duration``);
        the rest of the file is never decoded. None: the whole file.

    Returns
    -------
    (np.ndarray of shape (n_channels, n_samples), float32, not clamped; int sample rate)

    Raises
    ------
    TrackFailure
        ``missing file``, ``not a regular file``, ``empty file`` or ``cannot decode: ...``
        (including a stream with no audio frames).
    """
    with AudioReader(source) as reader:
        frames = -1 if max_seconds is None else int(max_seconds * reader.rate)
        waveform = reader.read(frames) if frames >= 0 else _read_all(reader)
    if waveform.shape[1] == 0:
        raise TrackFailure("cannot decode: no audio frames")
    return waveform, reader.rate


def _read_all(reader: AudioReader) -> np.ndarray:
    blocks = list(reader.blocks(1 << 20))
    if not blocks:
        return np.zeros((reader.channels, 0), np.float32)
    return np.concatenate(blocks, axis=1)


# libmpg123's own lines ("[src/libmpg123/parse.c:...] error: ...", "Note: Illegal Audio-MPEG-Header ...").
_DECODER_LINE = re.compile(r"libmpg123|^(Note|Warning|Error): ")
# Redirecting fd 2 is process-wide: one capture at a time per process (dask workers run one task
# thread each, as docs/cluster.md says; a decoding worker process runs one track at a time).
_CAPTURE_LOCK = threading.Lock()


class _Captured:
    """What the decoder wrote to file descriptor 2 in a :func:`captured_stderr` block so far."""

    def __init__(self, file):
        self._file = file

    def text(self) -> str:
        self._file.seek(0)
        lines = self._file.read().decode("utf-8", "replace").splitlines()
        return "\n".join(line for line in lines if _DECODER_LINE.search(line))


@contextlib.contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """Keep what libmpg123 writes to fd 2 during the block off the terminal; ``text()`` returns it.

    Works in any thread (one capture at a time per process), so a failure reason is the same
    whichever backend made the shard. Lines that are not the decoder's (another thread's log
    record written meanwhile) are written back to fd 2 when the block ends.
    """
    with _CAPTURE_LOCK, tempfile.TemporaryFile() as buffer:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(buffer.fileno(), 2)
        try:
            yield _Captured(buffer)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            others = [
                line
                for line in buffer.read().decode("utf-8", "replace").splitlines()
                if not _DECODER_LINE.search(line)
            ]
            if others:
                os.write(2, ("\n".join(others) + "\n").encode())


def with_decoder_messages(reason: str, messages: str) -> str:
    """``reason`` followed by the decoder's own messages on one line (cut to a few hundred chars)."""
    lines = [line.strip() for line in messages.splitlines() if line.strip()]
    if not lines:
        return reason
    said = "; ".join(dict.fromkeys(lines))
    if len(said) > MAX_MESSAGE_CHARS:
        said = said[: MAX_MESSAGE_CHARS - 3] + "..."
    return f"{reason} (decoder: {said})"


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TrackTimeout` in the body after ``seconds`` of wall time.

    Uses ``SIGALRM``, so it works in the main thread of a process; elsewhere it does
    nothing. The exception is raised when control returns to Python: a blocking system
    call is interrupted, a long C computation finishes first, and raised inside a C
    callback it can leave the process in a bad state. So the features stage does not use
    it: its supervisor (``preprocess.supervise``) kills a worker whose track runs past the
    limit from outside. Code in the body may catch the exception and carry on (``pathlib``'s
    ``is_file()`` answers False when it catches it, a ValueError); the limit still holds: a body
    that ends, or fails otherwise, after the alarm went off raises :class:`TrackTimeout`.
    """
    usable = (
        seconds is not None
        and seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    reason = f"timed out after {seconds:g} s"
    armed = True  # False once the body is over: a late alarm must not raise inside the clean-up
    fired = []

    def on_alarm(signum, frame):
        if armed:
            fired.append(signum)
            raise TrackTimeout(reason)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    except TrackTimeout:
        raise
    except Exception as exc:
        if fired:  # the alarm's exception was swallowed and the body failed on: the timeout is the reason
            raise TrackTimeout(reason) from exc
        raise
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:  # the body swallowed the alarm's exception and finished late
        raise TrackTimeout(reason)


@dataclass(frozen=True)
class TrackImage:
    """One track's image and what the short-clip policy did to it.

    Attributes
    ----------
    image : np.ndarray, shape (recipe.n_mels, recipe.n_frames), float32
    seconds : float
        Length of audio the image was made from (at most the recipe's ``duration_s``).
    padded : bool
        True when the clip was shorter than ``duration_s`` and padded with silence.
    fine : np.ndarray or None, shape (fine.n_mels, fine.n_frames), float16
        The finer image of the same samples, when a ``fine`` recipe was asked for.
    """

    image: np.ndarray
    seconds: float
    padded: bool
    fine: np.ndarray | None = None


def is_digital_silence(mono: np.ndarray, rate: int) -> bool:
    """True if ``mono`` (shape (n,)) never exceeds one 16-bit step after its first 0.1 s."""
    return is_quiet([mono[silence_skip(rate) :]])


def silence_skip(rate: int) -> int:
    """Samples at the start of a clip that the silence check ignores (decoders may ring there)."""
    return int(SILENCE_SKIP_S * rate)


def is_quiet(parts: Iterable[np.ndarray]) -> bool:
    """True if no sample of ``parts`` (consecutive pieces of one mono signal, shape (n_i,) each)
    exceeds one 16-bit step in magnitude."""
    parts = [part for part in parts if part.size]
    if not parts:
        return True
    # Music is loud early on: a short look settles most clips without reading all of them. The
    # peak of |x| is max(max, -min): no array of absolute values.
    for part in (parts[0][:SILENCE_FIRST_LOOK], *parts):
        if max(float(part.max()), -float(part.min())) > SILENCE_PEAK:
            return False
    return True


def image_of(
    waveform: np.ndarray, rate: int, recipe: Recipe, keep_silence: bool = False, fine: Recipe | None = None
) -> TrackImage:
    """The recipe's image of a decoded clip, with its padding and silence checks.

    Parameters
    ----------
    waveform : np.ndarray, shape (channels, n) or (n,), at ``rate``
    rate : int
    recipe : Recipe
    keep_silence : bool
        Make an image of digital silence instead of failing it.
    fine : Recipe, optional
        Also make this recipe's image of the same prepared samples (stored as float16); it must
        prepare clips as ``recipe`` does (:func:`~preprocess.recipe.same_waveform`).

    Raises
    ------
    TrackFailure
        ``too short: ...``, ``digital silence``, ``bad audio: ...``.
    """
    if fine is not None and not same_waveform(recipe, fine):
        raise ValueError(
            f"recipe {fine.name!r} prepares clips unlike {recipe.name!r}: it needs its own decode"
        )
    try:
        n = min(waveform.shape[-1], int(recipe.duration_s * rate))
        mono, out_rate = prepare_waveform(waveform, rate, recipe)
        if not keep_silence and is_digital_silence(mono, out_rate):
            raise TrackFailure(SILENCE)
        image = mel_from_mono(mono, out_rate, recipe)
        fine_image = None if fine is None else mel_from_mono(mono, out_rate, fine).astype(np.float16)
    except TooShortError as exc:
        raise TrackFailure(str(exc)) from None
    except TrackFailure:
        raise
    except ValueError as exc:
        raise TrackFailure(f"bad audio: {exc}") from None
    return TrackImage(
        image=image, seconds=n / rate, padded=n < int(recipe.duration_s * rate), fine=fine_image
    )


_WARMED: set = set()


def warm_up(recipe: Recipe, fine: Recipe | None = None) -> None:
    """Pay this process's one-time costs of :func:`image_of` now, once per recipe.

    In a fresh process the first image costs ~0.7 s of CPU more than the others (imports, numba
    compiling librosa's kernels, the filterbank of the common rate), much more wall time on a busy
    machine. A worker calls this before its first timed track, so a per-track time limit counts
    tracks only. The image is thrown away; the caches it fills hold what any track would compute.
    """
    key = (repr(recipe), repr(fine))
    if key in _WARMED:
        return
    rate = 44100
    image_of(np.full((2, int(recipe.duration_s * rate)), 0.1, np.float32), rate, recipe, True, fine)
    _WARMED.add(key)


def track_image(
    source: Source,
    recipe: Recipe,
    timeout_s: float | None = None,
    keep_silence: bool = False,
    fine: Recipe | None = None,
) -> TrackImage:
    """Decode the first ``recipe.duration_s`` of one file and compute its image.

    Every failure becomes a :class:`TrackFailure`; what the decoder printed about the
    file goes into the reason, not onto the terminal.

    Parameters
    ----------
    source : path or binary file object
    recipe : Recipe
    timeout_s : float, optional
        Per-track wall-time limit (decode + image).
    keep_silence : bool
        Keep digital silence (an image at the dB floor) instead of failing it.
    fine : Recipe, optional
        Also the finer image of the same decoded samples (``TrackImage.fine``).

    Returns
    -------
    TrackImage
        ``image`` of shape (recipe.n_mels, recipe.n_frames), float32.
    """
    with captured_stderr() as said:
        try:
            with time_limit(timeout_s):
                waveform, rate = decode(source, max_seconds=recipe.duration_s)
                return image_of(waveform, rate, recipe, keep_silence, fine)
        except TrackFailure as exc:
            failure = type(exc)(with_decoder_messages(str(exc), said.text()))
    raise failure from None


def mel_from_file(path: str | os.PathLike, recipe: dict | Recipe | None = None) -> np.ndarray:
    """The image the features stage stores for ``path`` (for ``train predict``).

    Parameters
    ----------
    path : path-like
        An audio file (MP3, or anything libsndfile reads: WAV, FLAC, Ogg).
    recipe : dict or Recipe, optional
        The recipe stored in the shards/manifest; default the reference recipe.

    Returns
    -------
    np.ndarray, shape (n_mels, n_frames) = (128, 128) for the reference, float32

    Raises
    ------
    TrackFailure
        A ValueError whose message is the reason (``empty file``,
        ``too short: 1.2 s < 5 s``, ``cannot decode: ...``), prefixed by the path.
    """
    if recipe is None:
        recipe = Recipe()
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    try:
        return track_image(path, recipe).image
    except TrackFailure as exc:
        raise TrackFailure(f"{path}: {exc}") from None
