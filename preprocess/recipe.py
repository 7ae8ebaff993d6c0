"""The feature recipe: plain data, and the pure function waveform -> log-mel image.

The default recipe is the reference project's, so results compare:

1. mono (mean of the channels), the first ``duration_s`` = 29.5 s;
2. the native sample rate, resampled (soxr, librosa's ``soxr_hq``) to
   ``min_sample_rate`` = 22050 Hz only when the native rate is below it;
3. ``hop = int(sr * 29.5 / 128) + 1``, ``n_fft = 2 * hop``, a Hann window,
   centred frames padded with zeros (librosa's defaults), power spectrogram;
4. 128 mel bands (Slaney, 0 .. 11025 Hz), to dB as ``librosa.power_to_db``
   with its defaults (ref=1.0, amin=1e-10, top_db=80).

The result is a (128, 128) float32 image, mel band x time frame.

Short clips (the policy, explicit)
----------------------------------
A clip shorter than ``duration_s`` but at least ``min_duration_s`` (5 s) is
padded at the end with digital silence up to the length that gives exactly
``n_frames`` frames. Silence has zero power, which ``power_to_db`` maps to the
image's floor (its maximum minus ``top_db``): the missing time reads as the dB
floor. A clip is never stretched. A clip shorter than ``min_duration_s`` raises
:class:`TooShortError` and the track is recorded as failed
("too short: 1.2 s < 5 s").

Digital silence gives a finite image (every value ``10*log10(amin)`` = -100 dB).

The window and the mel filterbank are built once per (sample rate, recipe) in
each process and cached.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.sparse

# Frames transformed together: 32 x n_fft float32 is ~2.6 MB at 44.1 kHz, about cache-sized
# (measured ~15 % faster per track than transforming all 128 frames at once).
FRAME_BLOCK = 32


#: What :func:`prepare_waveform` says about a waveform with NaN or infinite samples.
NOT_FINITE = "waveform holds NaN or infinite samples"


class TooShortError(ValueError):
    """A clip shorter than the recipe's minimum duration."""


@dataclass(frozen=True)
class Recipe:
    """Parameters of the log-mel image; plain data stored with every shard.

    Attributes
    ----------
    name : str
        A label for humans ("reference").
    duration_s : float
        Seconds from the start of the clip that the image covers.
    sample_rate : int or None
        None: keep the native rate (resampling up to ``min_sample_rate`` when
        below it). An int: always resample to that rate.
    min_sample_rate : int
        Native rates below this are resampled up to it (when ``sample_rate`` is None).
    n_mels, n_frames : int
        Image height (mel bands) and width (time frames).
    fmin, fmax : float
        Mel filterbank range in Hz.
    ref, amin, top_db : float
        ``librosa.power_to_db`` parameters.
    min_duration_s : float
        Clips shorter than this fail; longer short clips are padded with silence.
    resample_quality : str
        librosa ``res_type`` used for resampling.
    """

    name: str = "reference"
    duration_s: float = 29.5
    sample_rate: int | None = None
    min_sample_rate: int = 22050
    n_mels: int = 128
    n_frames: int = 128
    fmin: float = 0.0
    fmax: float = 11025.0
    ref: float = 1.0
    amin: float = 1e-10
    top_db: float = 80.0
    min_duration_s: float = 5.0
    resample_quality: str = "soxr_hq"

    def __post_init__(self) -> None:
        if self.duration_s <= 0 or self.min_duration_s < 0 or self.min_duration_s > self.duration_s:
            raise ValueError(
                f"need 0 <= min_duration_s <= duration_s and duration_s > 0, got "
                f"{self.min_duration_s}, {self.duration_s}"
            )
        if self.n_mels < 1 or self.n_frames < 2:
            raise ValueError(f"need n_mels >= 1 and n_frames >= 2, got {self.n_mels}, {self.n_frames}")
        if self.sample_rate is not None and self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive or None, got {self.sample_rate}")
        if not 0 <= self.fmin < self.fmax:
            raise ValueError(f"need 0 <= fmin < fmax, got {self.fmin}, {self.fmax}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (stored in shards and the manifest)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        if not isinstance(data, dict):
            raise ValueError(f"a recipe must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def output_rate(self, native_rate: int) -> int:
        """The sample rate the spectrogram is computed at, for a clip at ``native_rate``."""
        if self.sample_rate is not None:
            return int(self.sample_rate)
        return max(int(native_rate), int(self.min_sample_rate))

    def hop_length(self, rate: int) -> int:
        """``int(rate * duration_s / n_frames) + 1``: n_frames frames cover duration_s."""
        return int(rate * self.duration_s / self.n_frames) + 1

    def n_fft(self, rate: int) -> int:
        """FFT size: twice the hop."""
        return 2 * self.hop_length(rate)


#: Named recipes; "reference" is the default and matches the reference project.
#: "fine" is the finer image stored beside it (``--recipes reference,fine``): the same clip,
#: sample rates and mel bands, but 1,271 frames of 23.2 ms instead of 128 of 230 ms. At FMA's
#: usual 44.1 kHz that is hop 1,024 and n_fft 2,048, no resampling (a power-of-two FFT: three
#: times faster than a nearby odd size); at 22.05 kHz hop 512 and n_fft 1,024. 128 frames of it
#: are 2.97 s, the chunk length short-chunk music taggers train on.
RECIPES = {
    "reference": Recipe(),
    "fixed22050": Recipe(name="fixed22050", sample_rate=22050),
    "fine": Recipe(name="fine", n_frames=1271),
}


def same_waveform(a: Recipe, b: Recipe) -> bool:
    """True if ``a`` and ``b`` prepare a clip the same way (duration, sample rate, minimum length),
    so that one prepared waveform (:func:`prepare_waveform`) serves both images."""
    fields = ("duration_s", "sample_rate", "min_sample_rate", "min_duration_s", "resample_quality")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


@functools.lru_cache(maxsize=16)
def _analysis(rate: int, recipe: Recipe) -> tuple[np.ndarray, scipy.sparse.csr_matrix, int]:
    """Window (n_fft,) float32, sparse mel basis (n_mels, n_bins_used) float32, n_bins_used.

    Cached per process: building the filterbank costs more than using it. The basis
    is sparse (each band spans a few bins; ~10k non-zeros of 650k at 44.1 kHz), which
    makes the product ~5x cheaper than a dense one, and single-threaded C: the images
    are bit-identical whichever process or thread pool makes them.
    """
    import librosa
    import scipy.signal

    n_fft = recipe.n_fft(rate)
    window = scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    basis = librosa.filters.mel(
        sr=rate,
        n_fft=n_fft,
        n_mels=recipe.n_mels,
        fmin=recipe.fmin,
        fmax=recipe.fmax,
        htk=False,
        norm="slaney",
        dtype=np.float32,
    )
    nonzero = np.flatnonzero(basis.any(axis=0))
    n_bins = int(nonzero[-1]) + 1 if nonzero.size else 1
    return window, scipy.sparse.csr_matrix(basis[:, :n_bins]), n_bins


def prepare_waveform(waveform: np.ndarray, sample_rate: int, recipe: Recipe) -> tuple[np.ndarray, int]:
    """Mono, first ``duration_s``, resampled as the recipe says; checked for length.

    Parameters
    ----------
    waveform : np.ndarray, shape (n_samples,) or (n_channels, n_samples)
        Samples in [-1, 1] at ``sample_rate``.
    sample_rate : int
    recipe : Recipe

    Returns
    -------
    (np.ndarray of shape (n,), float32; int)
        The mono waveform and its sample rate.

    Raises
    ------
    TooShortError
        If the clip is shorter than ``recipe.min_duration_s``.
    ValueError
        If the waveform is empty, has the wrong shape or holds NaN/inf.
    """
    y = np.asarray(waveform)
    if y.ndim not in (1, 2) or y.shape[-1] == 0:
        raise ValueError(f"waveform must have shape (n,) or (channels, n) with n > 0, got {y.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    y = y.astype(np.float32, copy=False)[..., : int(recipe.duration_s * sample_rate)]
    if y.ndim == 2:
        y = downmix(y)
    seconds = y.shape[0] / sample_rate
    if seconds < recipe.min_duration_s:
        raise TooShortError(f"too short: {seconds:.1f} s < {recipe.min_duration_s:g} s")
    if not np.isfinite(y).all():
        raise ValueError(NOT_FINITE)
    rate = recipe.output_rate(sample_rate)
    if rate != sample_rate:
        import librosa

        y = librosa.resample(y, orig_sr=sample_rate, target_sr=rate, res_type=recipe.resample_quality)
        y = y.astype(np.float32, copy=False)
    return np.ascontiguousarray(y), rate


def downmix(waveform: np.ndarray) -> np.ndarray:
    """The mean over channels, sample by sample (step 1 of the recipe).

    Summed row by row: ``np.mean(axis=0)`` gives the same values but is ~20x slower on the
    strided view of interleaved samples. Each output sample depends only on its own input
    samples, so a stream down-mixed block by block equals the whole clip down-mixed at once.

    Parameters
    ----------
    waveform : np.ndarray, shape (n_channels, n), float32

    Returns
    -------
    np.ndarray, shape (n,), float32 (a new array)
    """
    y = waveform
    mono = y[0] + y[1] if y.shape[0] > 1 else y[0].copy()
    for channel in y[2:]:
        mono += channel
    if y.shape[0] > 1:
        np.divide(mono, np.float32(y.shape[0]), out=mono)
    return mono


def mel_image(waveform: np.ndarray, sample_rate: int, recipe: Recipe | dict | None = None) -> np.ndarray:
    """The log-mel image of a clip: a pure function of (waveform, sample rate, recipe).

    Parameters
    ----------
    waveform : np.ndarray, shape (n_samples,) or (n_channels, n_samples)
        Samples in [-1, 1] (float) at ``sample_rate``.
    sample_rate : int
        The native sample rate of ``waveform``.
    recipe : Recipe or dict, optional
        Defaults to ``RECIPES["reference"]``.

    Returns
    -------
    np.ndarray, shape (recipe.n_mels, recipe.n_frames), float32
        Power in dB, finite, at most ``top_db`` below its maximum.

    Raises
    ------
    TooShortError
        Clip shorter than ``recipe.min_duration_s`` (see the module docstring).
    ValueError
        Empty or non-finite waveform.
    """
    if recipe is None:
        recipe = RECIPES["reference"]
    elif isinstance(recipe, dict):
        recipe = Recipe.from_dict(recipe)
    y, rate = prepare_waveform(waveform, sample_rate, recipe)
    return mel_from_mono(y, rate, recipe)


def mel_from_mono(y: np.ndarray, rate: int, recipe: Recipe) -> np.ndarray:
    """Steps 3-4 of the recipe on an already prepared mono waveform.

    Parameters
    ----------
    y : np.ndarray, shape (n,), float32, n >= 1
    rate : int
        Sample rate of ``y`` (the recipe's output rate).
    recipe : Recipe

    Returns
    -------
    np.ndarray, shape (recipe.n_mels, recipe.n_frames), float32
    """
    return power_to_db(mel_power(y, rate, recipe, 0, recipe.n_frames), recipe)


def mel_power(y: np.ndarray, rate: int, recipe: Recipe, first: int, count: int) -> np.ndarray:
    """Mel power (before dB) of frames ``first .. first + count - 1`` of a prepared mono waveform.

    Frame k is ``y[(k-1)*hop : (k+1)*hop]`` (centred frames, n_fft = 2*hop), zero where that runs
    past either end (librosa.stft center=True, pad_mode='constant'); past the end of a short clip
    that is the silence of the short-clip policy. A frame that lies wholly inside ``y`` depends
    only on those samples: the same samples anywhere in a longer waveform give the same column,
    bit for bit (``preprocess.windows`` shares the frames of overlapping windows this way).

    Parameters
    ----------
    y : np.ndarray, shape (n,), float32, n >= 1
    rate : int
        Sample rate of ``y`` (the recipe's output rate).
    recipe : Recipe
    first, count : int
        The frames wanted (``first >= 0``, ``count >= 0``; any frame index, also past
        ``recipe.n_frames``).

    Returns
    -------
    np.ndarray, shape (recipe.n_mels, count), float32
    """
    if first < 0 or count < 0:
        raise ValueError(f"need first >= 0 and count >= 0, got {first}, {count}")
    hop = recipe.hop_length(rate)
    n_fft = recipe.n_fft(rate)
    window, basis, n_bins = _analysis(rate, recipe)
    y = np.ascontiguousarray(y, dtype=np.float32)
    # Frames 1..inner lie inside y and are strided views of it; the others are copied into a
    # zero-padded buffer. Frames are transformed FRAME_BLOCK at a time so the working set stays
    # in cache (every frame is transformed on its own row: the blocking does not change a value).
    n = y.shape[0]
    inner = n // hop - 1
    frames = np.lib.stride_tricks.as_strided(
        y, shape=(max(inner, 0), n_fft), strides=(hop * y.itemsize, y.itemsize), writeable=False
    )
    mel = np.empty((recipe.n_mels, count), dtype=np.float32)
    windowed = np.empty((min(FRAME_BLOCK, count), n_fft), dtype=np.float32)
    for b0 in range(first, first + count, FRAME_BLOCK):
        b1 = min(b0 + FRAME_BLOCK, first + count)
        block = windowed[: b1 - b0]
        for k in range(b0, b1):
            if 1 <= k <= inner:
                np.multiply(frames[k - 1], window, out=block[k - b0])
            else:
                segment = np.zeros(n_fft, dtype=np.float32)
                start = (k - 1) * hop
                lo, hi = max(start, 0), min(start + n_fft, n)
                if hi > lo:
                    segment[lo - start : hi - start] = y[lo:hi]
                np.multiply(segment, window, out=block[k - b0])
        spectrum = scipy.fft.rfft(block, axis=-1)[:, :n_bins]
        power = spectrum.real * spectrum.real + spectrum.imag * spectrum.imag  # (frames, n_bins)
        mel[:, b0 - first : b1 - first] = basis @ power.T
    return mel


def power_to_db(power: np.ndarray, recipe: Recipe) -> np.ndarray:
    """``librosa.power_to_db(power, ref, amin, top_db)`` as float32.

    Parameters
    ----------
    power : np.ndarray, any shape, non-negative
    recipe : Recipe

    Returns
    -------
    np.ndarray, same shape, float32
    """
    db = 10.0 * np.log10(np.maximum(recipe.amin, power, dtype=np.float64))
    db -= 10.0 * np.log10(max(recipe.amin, recipe.ref))
    if recipe.top_db is not None:
        db = np.maximum(db, db.max() - recipe.top_db)
    return db.astype(np.float32)
