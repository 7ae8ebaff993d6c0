"""Decoding one audio file, and one file -> one log-mel image, with failures classified.

Decoders
--------
MP3s are decoded with miniaudio (dr_mp3, the C call behind ``mp3_read_file_f32``),
faster than ``librosa.load`` (libsndfile + mpg123) and sample-aligned with it: both
skip ID3 tags and honour a LAME gapless header (encoder delay and padding removed).
One difference is corrected here: for a Xing/Info header without an encoder
extension, mpg123 drops 529 samples of decoder delay and dr_mp3 does not, so we
drop them too. ``tests/test_audio.py`` checks the alignment on plain CBR files,
files with a LAME header and files with a bare Xing header. Other formats go
through miniaudio's generic decoder. When miniaudio fails, ``librosa.load`` is
tried before the file is declared undecodable.

Failure reasons (the strings stored in shards and the manifest)
---------------------------------------------------------------
``missing file``, ``not a regular file``, ``empty file``,
``cannot decode: <decoder message>``, ``too short: 1.2 s < 5 s``,
``timeout after 60 s``, ``bad audio: <problem>`` (e.g. NaN samples).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from pathlib import Path
from typing import Iterator

import miniaudio
import numpy as np

from preprocess.recipe import Recipe, TooShortError, mel_image


class TrackFailure(ValueError):
    """A track that cannot be turned into an image; ``str(exc)`` is the reason."""


class TrackTimeout(TrackFailure):
    """The per-track time limit ran out."""


# mpg123 (libsndfile's MP3 decoder) drops this many samples of decoder delay at the start
# of any stream with a Xing/Info header; dr_mp3 only when the header has an encoder
# (LAME) extension, which carries the delay itself.
MPG123_DECODER_DELAY = 529


def _skips_decoder_delay_like_mpg123(path: Path) -> bool:
    """True if ``path`` starts with a Xing/Info frame without an encoder extension.

    For such files mpg123 drops the first 529 samples and dr_mp3 does not; with
    an extension (LAME's, with encoder delay and padding) both trim the same and
    without a Xing/Info frame neither trims. Reads only the head of the file.
    """
    with open(path, "rb") as fh:
        head = fh.read(10)
        offset = 0
        if len(head) == 10 and head[:3] == b"ID3":
            size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7 | (head[9] & 0x7F)
            offset = 10 + size + (10 if head[5] & 0x10 else 0)
        fh.seek(offset)
        frame = fh.read(4096)
    for start in range(max(len(frame) - 4, 0)):
        b0, b1 = frame[start], frame[start + 1]
        if b0 == 0xFF and (b1 & 0xE0) == 0xE0 and ((b1 >> 1) & 3) == 1 and ((b1 >> 3) & 3) != 1:
            break
    else:
        return False
    mpeg1 = ((frame[start + 1] >> 3) & 3) == 3
    mono = (frame[start + 3] >> 6) == 3
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    tag = start + 4 + side_info + (0 if frame[start + 1] & 1 else 2)
    if frame[tag : tag + 4] not in (b"Xing", b"Info") or len(frame) < tag + 8:
        return False
    flags = int.from_bytes(frame[tag + 4 : tag + 8], "big")
    ext = tag + 8 + 4 * bool(flags & 1) + 4 * bool(flags & 2) + 100 * bool(flags & 4) + 4 * bool(flags & 8)
    return ext < len(frame) and frame[ext] == 0


def _mp3_read_f32(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """dr_mp3's whole-file decode, returned as a numpy view of the decoder's own buffer.

    The same C call as ``miniaudio.mp3_read_file_f32`` without its copy into an
    ``array.array``: the buffer is freed when the returned array is garbage collected.
    """
    ffi, lib = miniaudio.ffi, miniaudio.lib
    with ffi.new("ma_dr_mp3_config *") as config, ffi.new("ma_dr_mp3_uint64 *") as num_frames:
        memory = lib.ma_dr_mp3_open_file_and_read_pcm_frames_f32(os.fsencode(path), config, num_frames,
                                                                  ffi.NULL)
        if not memory:
            raise miniaudio.DecodeError("cannot load/decode file")
        memory = ffi.gc(memory, lambda m: lib.ma_dr_mp3_free(m, ffi.NULL))
        channels, rate, frames = int(config.channels), int(config.sampleRate), int(num_frames[0])
    if channels < 1 or frames < 1:
        return np.zeros((1, 0), np.float32), rate
    data = np.frombuffer(ffi.buffer(memory, frames * channels * 4), dtype=np.float32)
    if _skips_decoder_delay_like_mpg123(path):  # stay sample-aligned with librosa.load
        skip = min(MPG123_DECODER_DELAY, frames)
        data, frames = data[skip * channels :], frames - skip
    if max_seconds is not None and rate > 0:
        frames = min(frames, int(max_seconds * rate))
    return data[: frames * channels].reshape(frames, channels).T, rate


def _decode_miniaudio(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    if path.suffix.lower() == ".mp3":
        lib = getattr(miniaudio, "lib", None)
        if hasattr(miniaudio, "ffi") and hasattr(lib, "ma_dr_mp3_open_file_and_read_pcm_frames_f32"):
            return _mp3_read_f32(path, max_seconds)
        decoded = miniaudio.mp3_read_file_f32(str(path))
    else:
        info = miniaudio.get_file_info(str(path))
        decoded = miniaudio.decode_file(
            str(path), output_format=miniaudio.SampleFormat.FLOAT32,
            nchannels=info.nchannels, sample_rate=info.sample_rate,
        )
    channels = max(int(decoded.nchannels), 1)
    samples = np.frombuffer(decoded.samples, dtype=np.float32)
    interleaved = samples[: samples.shape[0] // channels * channels].reshape(-1, channels)
    return interleaved.T, int(decoded.sample_rate)


def _decode_librosa(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    import librosa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # audioread fallback warnings; failures raise
        y, rate = librosa.load(str(path), sr=None, mono=False, duration=max_seconds)
    y = np.asarray(y, dtype=np.float32)
    return (y[None, :] if y.ndim == 1 else y), int(rate)


def decode(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file to float samples at its native rate.

    Parameters
    ----------
    path : path-like
    max_seconds : float, optional
        Keep only the first ``int(max_seconds * rate)`` frames (all of them if None).

    Returns
    -------
    (np.ndarray of shape (n_channels, n_samples), float32 in [-1, 1]; int sample rate)

    Raises
    ------
    TrackFailure
        ``missing file``, ``not a regular file``, ``empty file`` or
        ``cannot decode: ...`` (both decoders failed or gave no samples).
    """
    path = Path(path)
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
    first_error = "no audio frames"
    try:
        waveform, rate = _decode_miniaudio(path, max_seconds)
        if waveform.shape[1] > 0 and rate > 0:
            return waveform, rate
    except miniaudio.DecodeError as exc:
        first_error = str(exc) or type(exc).__name__
    try:
        waveform, rate = _decode_librosa(path, max_seconds)
    except TrackTimeout:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is a property of the file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackFailure(f"cannot decode: {first_error}; librosa: {message}") from None
    if waveform.shape[-1] == 0 or rate <= 0:
        raise TrackFailure(f"cannot decode: {first_error}; librosa: no audio frames")
    return waveform, rate


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TrackTimeout` in the body after ``seconds`` of wall time.

    Uses ``SIGALRM``, so it works in the main thread of a process (joblib's
    process workers); elsewhere (dask's worker threads) it does nothing. The
    exception is raised when control returns to Python: a blocking system call
    is interrupted, a long C computation finishes first.
    """
    usable = (
        seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TrackTimeout(f"timeout after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def track_image(path: str | os.PathLike, recipe: Recipe, timeout_s: float | None = None) -> np.ndarray:
    """Decode one file and compute its image; every failure becomes a :class:`TrackFailure`.

    Parameters
    ----------
    path : path-like
    recipe : Recipe
    timeout_s : float, optional
        Per-track wall-time limit (decode + image).

    Returns
    -------
    np.ndarray, shape (recipe.n_mels, recipe.n_frames), float32
    """
    try:
        with time_limit(timeout_s):
            waveform, rate = decode(path, max_seconds=recipe.duration_s)
            return mel_image(waveform, rate, recipe)
    except TrackFailure:
        raise
    except TooShortError as exc:
        raise TrackFailure(str(exc)) from None
    except ValueError as exc:
        raise TrackFailure(f"bad audio: {exc}") from None


def mel_from_file(path: str | os.PathLike, recipe: dict | Recipe | None = None) -> np.ndarray:
    """The image the features stage stores for ``path`` (for ``train predict``).

    Parameters
    ----------
    path : path-like
        An audio file (MP3 or anything miniaudio/librosa decode).
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
        return track_image(path, recipe)
    except TrackFailure as exc:
        raise TrackFailure(f"{path}: {exc}") from None
