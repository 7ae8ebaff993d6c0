"""Audio side of the generated mini-FMA: genre styles, synthesis, MP3 encoding, ID3 tags.

Everything here is a pure function of its arguments (a seeded ``numpy.random.Generator``
included), so a track's bytes depend only on ``(seed, track_id)`` and tracks can be made
in any order, in parallel, with identical results.

Each of the 16 top-level genres has a :class:`Style`: ranges for tempo, melody pitch,
brightness (harmonic roll-off), note length, drum levels (kick, snare, hi-hat), noise
level and colour, bass, band limit and crackle. A track draws its own values inside its
genre's ranges, so tracks of one genre vary, and neighbouring genres overlap a little.

Each sub-genre (``preprocess.synth.meta.SUB_GENRES``) changes its parent's style in a few of
those ranges (:data:`SUB_STYLES`): its own tempo, rhythm (notes per beat, drums), register or
timbre (brightness, noise, band limit, vibrato), so that sub-genres of one top genre differ
audibly from each other and from the plain top genre (:func:`genre_style`; a sub-sub-genre
applies its parent's changes, then its own).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, replace

import lameenc
import numpy as np
import soxr
from scipy.signal import lfilter

from preprocess.fma import TOP_GENRES
from preprocess.synth.meta import SUB_GENRES, genre_ancestors


@dataclass(frozen=True)
class Style:
    """Ranges (lo, hi) a track of one genre draws its synthesis parameters from.

    Levels are linear amplitudes relative to the melody (0 = absent).
    """

    tempo: tuple[float, float]  # beats per minute
    notes_per_beat: tuple[int, ...]  # melody subdivision choices
    pitch: tuple[int, int]  # melody MIDI note range
    brightness: tuple[float, float]  # harmonic roll-off r: harmonic k has amplitude r**(k-1)
    harmonics: int  # number of harmonics of the melody voice
    legato: tuple[float, float]  # note decay time as a fraction of the note length
    kick: tuple[float, float]
    snare: tuple[float, float]
    hat: tuple[float, float]
    noise: tuple[float, float]  # background noise level
    noise_colour: tuple[float, float]  # one-pole low-pass coefficient of the noise (0 white .. 0.99 dark)
    bass: tuple[float, float]
    lowpass: tuple[float, float] = (0.0, 0.0)  # one-pole low-pass on the mix (0 = none)
    crackle: tuple[float, float] = (0.0, 0.0)  # vinyl-like clicks per second
    chord: int = 1  # simultaneous melody voices (1..3)
    vibrato: tuple[float, float] = (0.0, 0.0)  # depth in semitones
    speech: bool = False  # syllable gating and gliding pitch instead of notes


# One style per top-level genre title (see preprocess.fma.TOP_GENRES).
STYLES: dict[str, Style] = {
    "Rock": Style(
        tempo=(110, 150),
        notes_per_beat=(2,),
        pitch=(40, 64),
        brightness=(0.8, 0.92),
        harmonics=8,
        legato=(0.6, 1.0),
        kick=(0.6, 0.9),
        snare=(0.6, 0.9),
        hat=(0.2, 0.4),
        noise=(0.08, 0.15),
        noise_colour=(0.3, 0.6),
        bass=(0.4, 0.6),
        chord=2,
    ),
    "Electronic": Style(
        tempo=(120, 140),
        notes_per_beat=(4,),
        pitch=(55, 80),
        brightness=(0.6, 0.85),
        harmonics=6,
        legato=(0.2, 0.5),
        kick=(0.9, 1.2),
        snare=(0.2, 0.4),
        hat=(0.4, 0.7),
        noise=(0.0, 0.03),
        noise_colour=(0.0, 0.3),
        bass=(0.6, 0.9),
    ),
    "Experimental": Style(
        tempo=(40, 200),
        notes_per_beat=(1, 3, 5),
        pitch=(30, 96),
        brightness=(0.3, 0.95),
        harmonics=7,
        legato=(0.1, 1.0),
        kick=(0.0, 0.5),
        snare=(0.0, 0.3),
        hat=(0.0, 0.5),
        noise=(0.1, 0.4),
        noise_colour=(0.0, 0.95),
        bass=(0.0, 0.4),
        crackle=(0, 20),
    ),
    "Hip-Hop": Style(
        tempo=(80, 100),
        notes_per_beat=(1, 2),
        pitch=(48, 67),
        brightness=(0.4, 0.6),
        harmonics=4,
        legato=(0.3, 0.7),
        kick=(1.0, 1.3),
        snare=(0.6, 0.9),
        hat=(0.3, 0.5),
        noise=(0.01, 0.05),
        noise_colour=(0.5, 0.8),
        bass=(0.8, 1.1),
        crackle=(0, 3),
    ),
    "Folk": Style(
        tempo=(80, 120),
        notes_per_beat=(2,),
        pitch=(52, 76),
        brightness=(0.5, 0.7),
        harmonics=6,
        legato=(0.3, 0.6),
        kick=(0.0, 0.15),
        snare=(0.0, 0.1),
        hat=(0.0, 0.1),
        noise=(0.01, 0.04),
        noise_colour=(0.4, 0.7),
        bass=(0.1, 0.3),
        chord=3,
    ),
    "Instrumental": Style(
        tempo=(70, 110),
        notes_per_beat=(1, 2),
        pitch=(55, 84),
        brightness=(0.3, 0.5),
        harmonics=4,
        legato=(0.7, 1.0),
        kick=(0.0, 0.3),
        snare=(0.0, 0.2),
        hat=(0.0, 0.2),
        noise=(0.0, 0.03),
        noise_colour=(0.6, 0.9),
        bass=(0.2, 0.4),
        chord=2,
    ),
    "Pop": Style(
        tempo=(95, 125),
        notes_per_beat=(2,),
        pitch=(60, 79),
        brightness=(0.55, 0.75),
        harmonics=5,
        legato=(0.4, 0.8),
        kick=(0.6, 0.8),
        snare=(0.5, 0.7),
        hat=(0.3, 0.5),
        noise=(0.0, 0.03),
        noise_colour=(0.3, 0.6),
        bass=(0.4, 0.6),
        chord=2,
        vibrato=(0.1, 0.3),
    ),
    "International": Style(
        tempo=(90, 140),
        notes_per_beat=(3,),
        pitch=(57, 81),
        brightness=(0.6, 0.8),
        harmonics=6,
        legato=(0.2, 0.5),
        kick=(0.2, 0.5),
        snare=(0.1, 0.3),
        hat=(0.4, 0.7),
        noise=(0.01, 0.05),
        noise_colour=(0.2, 0.5),
        bass=(0.2, 0.4),
        vibrato=(0.3, 0.7),
    ),
    "Classical": Style(
        tempo=(50, 90),
        notes_per_beat=(1, 2),
        pitch=(55, 88),
        brightness=(0.7, 0.85),
        harmonics=8,
        legato=(0.9, 1.0),
        kick=(0.0, 0.0),
        snare=(0.0, 0.0),
        hat=(0.0, 0.0),
        noise=(0.0, 0.01),
        noise_colour=(0.7, 0.9),
        bass=(0.2, 0.4),
        chord=3,
        vibrato=(0.1, 0.25),
    ),
    "Old-Time / Historic": Style(
        tempo=(90, 130),
        notes_per_beat=(2,),
        pitch=(55, 76),
        brightness=(0.6, 0.8),
        harmonics=6,
        legato=(0.4, 0.8),
        kick=(0.0, 0.2),
        snare=(0.0, 0.2),
        hat=(0.0, 0.1),
        noise=(0.05, 0.12),
        noise_colour=(0.0, 0.3),
        bass=(0.1, 0.3),
        lowpass=(0.75, 0.85),
        crackle=(10, 40),
        chord=2,
    ),
    "Jazz": Style(
        tempo=(100, 180),
        notes_per_beat=(3,),
        pitch=(50, 82),
        brightness=(0.5, 0.7),
        harmonics=5,
        legato=(0.4, 0.7),
        kick=(0.1, 0.3),
        snare=(0.1, 0.3),
        hat=(0.5, 0.8),
        noise=(0.01, 0.04),
        noise_colour=(0.3, 0.6),
        bass=(0.5, 0.8),
        chord=3,
    ),
    "Country": Style(
        tempo=(100, 130),
        notes_per_beat=(2,),
        pitch=(52, 74),
        brightness=(0.65, 0.8),
        harmonics=7,
        legato=(0.2, 0.4),
        kick=(0.4, 0.6),
        snare=(0.4, 0.6),
        hat=(0.1, 0.3),
        noise=(0.01, 0.04),
        noise_colour=(0.3, 0.6),
        bass=(0.4, 0.6),
        chord=2,
        vibrato=(0.0, 0.1),
    ),
    "Soul-RnB": Style(
        tempo=(65, 95),
        notes_per_beat=(2,),
        pitch=(55, 75),
        brightness=(0.45, 0.65),
        harmonics=5,
        legato=(0.6, 0.9),
        kick=(0.6, 0.9),
        snare=(0.5, 0.8),
        hat=(0.2, 0.4),
        noise=(0.0, 0.03),
        noise_colour=(0.4, 0.7),
        bass=(0.7, 1.0),
        chord=3,
        vibrato=(0.2, 0.4),
    ),
    "Spoken": Style(
        tempo=(220, 300),
        notes_per_beat=(1,),
        pitch=(45, 60),
        brightness=(0.75, 0.9),
        harmonics=10,
        legato=(0.5, 0.8),
        kick=(0.0, 0.0),
        snare=(0.0, 0.0),
        hat=(0.0, 0.0),
        noise=(0.01, 0.05),
        noise_colour=(0.0, 0.4),
        bass=(0.0, 0.0),
        speech=True,
    ),
    "Blues": Style(
        tempo=(60, 90),
        notes_per_beat=(3,),
        pitch=(45, 70),
        brightness=(0.6, 0.8),
        harmonics=6,
        legato=(0.5, 0.8),
        kick=(0.3, 0.5),
        snare=(0.3, 0.5),
        hat=(0.2, 0.4),
        noise=(0.02, 0.05),
        noise_colour=(0.4, 0.7),
        bass=(0.5, 0.7),
        vibrato=(0.3, 0.6),
    ),
    "Easy Listening": Style(
        tempo=(70, 100),
        notes_per_beat=(1,),
        pitch=(60, 84),
        brightness=(0.2, 0.4),
        harmonics=3,
        legato=(0.8, 1.0),
        kick=(0.1, 0.2),
        snare=(0.0, 0.1),
        hat=(0.1, 0.2),
        noise=(0.0, 0.01),
        noise_colour=(0.6, 0.9),
        bass=(0.2, 0.4),
        chord=3,
    ),
}
if set(STYLES) != set(TOP_GENRES.values()):  # pragma: no cover - a programming error, caught on import
    raise RuntimeError("STYLES must have exactly one entry per top-level genre")

_QUIET = {"kick": (0.0, 0.0), "snare": (0.0, 0.0), "hat": (0.0, 0.0)}  # no drums
# What each sub-genre changes in its parent's style (Style fields), by genre id.
SUB_STYLES: dict[int, dict] = {
    # Rock
    25: {
        "tempo": (165, 195),
        "brightness": (0.9, 0.95),
        "legato": (0.3, 0.5),
        "noise": (0.15, 0.25),
        "noise_colour": (0.1, 0.3),
        "hat": (0.5, 0.7),
    },  # Punk
    26: {
        "tempo": (65, 85),
        "notes_per_beat": (4,),
        "pitch": (60, 84),
        "legato": (0.9, 1.0),
        "chord": 3,
        "kick": (0.2, 0.4),
        "snare": (0.1, 0.3),
        "noise": (0.02, 0.05),
    },  # Post-Rock
    27: {"lowpass": (0.8, 0.9), "crackle": (5, 15), "noise": (0.1, 0.2), "noise_colour": (0.0, 0.2)},  # Lo-Fi
    45: {"pitch": (35, 55), "brightness": (0.9, 0.95), "kick": (0.9, 1.2), "noise": (0.2, 0.3)},  # Loud-Rock
    31: {"tempo": (180, 220), "notes_per_beat": (4,), "pitch": (28, 45)},  # Metal (under Loud-Rock)
    167: {"noise": (0.35, 0.5), "noise_colour": (0.0, 0.1), "hat": (0.8, 1.0)},  # Black-Metal (under Metal)
    66: {"pitch": (62, 80), "brightness": (0.6, 0.75), "chord": 1, "vibrato": (0.1, 0.2)},  # Indie-Rock
    # Electronic
    181: {
        "tempo": (128, 138),
        "pitch": (45, 58),
        "legato": (0.1, 0.2),
        "kick": (1.3, 1.5),
        "hat": (0.9, 1.1),
        "noise": (0.08, 0.15),
        "noise_colour": (0.0, 0.1),
    },  # Techno
    182: {
        "tempo": (118, 126),
        "notes_per_beat": (2,),
        "pitch": (60, 76),
        "brightness": (0.4, 0.55),
        "legato": (0.6, 0.8),
        "chord": 3,
        "snare": (0.5, 0.7),
    },  # House
    236: {
        "tempo": (90, 170),
        "notes_per_beat": (3, 5),
        "pitch": (76, 96),
        "brightness": (0.8, 0.95),
        "kick": (0.2, 0.8),
        "crackle": (5, 20),
    },  # IDM
    42: {
        "tempo": (50, 70),
        "notes_per_beat": (1,),
        "brightness": (0.3, 0.5),
        "legato": (0.95, 1.0),
        "chord": 3,
        "noise": (0.05, 0.1),
        "noise_colour": (0.8, 0.95),
        **_QUIET,
    },  # Ambient Electronic
    468: {"tempo": (68, 75), "pitch": (30, 45), "bass": (1.2, 1.5), "vibrato": (1.0, 2.0)},  # Dubstep
    # Hip-Hop
    539: {"tempo": (200, 260), "notes_per_beat": (1,), "speech": True},  # Rap
    580: {
        "tempo": (70, 85),
        "legato": (0.7, 0.9),
        "chord": 3,
        "lowpass": (0.6, 0.75),
        "crackle": (5, 15),
    },  # Abstract Hip-Hop
    # Pop
    76: {"notes_per_beat": (3,), "brightness": (0.8, 0.95), "noise": (0.05, 0.12)},  # Experimental Pop
    362: {
        "notes_per_beat": (4,),
        "harmonics": 10,
        "brightness": (0.85, 0.95),
        "legato": (0.2, 0.35),
        "vibrato": (0.0, 0.0),
    },  # Synth-Pop
    # Experimental
    1: {
        "tempo": (30, 60),
        "notes_per_beat": (5,),
        "pitch": (70, 96),
        "kick": (0.0, 0.0),
        "snare": (0.0, 0.0),
    },  # Avant-Garde
    32: {"noise": (0.6, 0.9), "noise_colour": (0.0, 0.2), "crackle": (20, 60)},  # Noise
    250: {
        "tempo": (20, 30),
        "notes_per_beat": (1,),
        "pitch": (30, 45),
        "legato": (1.0, 1.0),
        "chord": 3,
        "noise": (0.0, 0.05),
        **_QUIET,
    },  # Drone
    # Folk
    103: {
        "notes_per_beat": (3,),
        "pitch": (70, 90),
        "noise": (0.05, 0.1),
        "crackle": (3, 10),
        "vibrato": (0.3, 0.6),
    },  # Freak-Folk
    49: {
        "pitch": (50, 62),
        "brightness": (0.3, 0.45),
        "legato": (0.8, 1.0),
        "chord": 1,
        "vibrato": (0.4, 0.7),
    },  # Singer-Songwriter
    # Jazz
    37: {"pitch": (57, 72), "legato": (0.7, 0.9), "chord": 1, "vibrato": (0.5, 0.8)},  # Jazz: Vocal
    97: {"tempo": (150, 220), "notes_per_beat": (5,), "pitch": (40, 90), "noise": (0.05, 0.1)},  # Jazz: Out
    # Classical
    187: {
        "tempo": (90, 120),
        "notes_per_beat": (3,),
        "pitch": (36, 55),
        "brightness": (0.4, 0.55),
        "legato": (0.4, 0.6),
    },  # Composed Music
    322: {
        "pitch": (72, 96),
        "harmonics": 4,
        "legato": (0.6, 0.8),
        "chord": 1,
        "vibrato": (0.3, 0.5),
    },  # Chamber Music
    # International
    77: {"tempo": (100, 120), "notes_per_beat": (2,), "chord": 3, "vibrato": (0.1, 0.2)},  # French
    79: {
        "tempo": (70, 80),
        "notes_per_beat": (2,),
        "bass": (1.0, 1.3),
        "kick": (0.8, 1.0),
        "snare": (0.6, 0.9),
        "lowpass": (0.5, 0.6),
    },  # Reggae - Dub
    92: {"pitch": (60, 80), "kick": (0.6, 0.8), "hat": (0.7, 0.9)},  # African
    # Country
    63: {
        "tempo": (140, 180),
        "notes_per_beat": (4,),
        "pitch": (64, 84),
        "brightness": (0.85, 0.95),
        "kick": (0.0, 0.0),
        "snare": (0.0, 0.0),
        "bass": (0.5, 0.7),
    },  # Bluegrass
    651: {
        "tempo": (160, 190),
        "pitch": (40, 55),
        "snare": (0.8, 1.0),
        "bass": (0.7, 0.9),
        "lowpass": (0.5, 0.65),
        "crackle": (10, 25),
    },  # Rockabilly
    # Easy Listening
    107: {
        "notes_per_beat": (3,),
        "pitch": (48, 60),
        "brightness": (0.6, 0.75),
        "harmonics": 6,
        "legato": (0.3, 0.5),
        "hat": (0.5, 0.7),
        "vibrato": (0.2, 0.4),
    },  # Lounge
    # Soul-RnB
    11: {
        "tempo": (115, 125),
        "notes_per_beat": (4,),
        "kick": (1.0, 1.2),
        "hat": (0.7, 0.9),
        "bass": (0.9, 1.1),
    },  # Disco
    # Spoken
    7: {"tempo": (280, 340), "pitch": (55, 70), "noise": (0.1, 0.2)},  # Comedy
    138: {"noise": (0.1, 0.3), "noise_colour": (0.0, 0.9), "crackle": (10, 30)},  # Audio Collage
    # Instrumental
    18: {
        "tempo": (50, 70),
        "pitch": (36, 55),
        "brightness": (0.75, 0.9),
        "harmonics": 8,
        "legato": (0.9, 1.0),
        "chord": 3,
        "kick": (0.7, 1.0),
        "noise": (0.02, 0.06),
        "noise_colour": (0.9, 0.95),
    },  # Soundtrack
}
if set(SUB_STYLES) != {g for g, _, _ in SUB_GENRES}:  # pragma: no cover - a programming error
    raise RuntimeError("SUB_STYLES must have exactly one entry per sub-genre of preprocess.synth.meta")


def genre_style(genre_id: int) -> Style:
    """The style of a genre: its top-level genre's, changed by every sub-genre on the way down.

    Raises KeyError for an id that is not in the generator's genre tree.
    """
    path = genre_ancestors(genre_id)[::-1]  # top-level genre first
    style = STYLES[TOP_GENRES[path[0]]]
    for sub in path[1:]:
        style = replace(style, **SUB_STYLES[sub])
    return style


# Synthesis runs at this rate (or the target rate if lower) and is resampled to the target.
SYNTH_RATE = 22050

# Sample rates MPEG-1 layer III supports up to 320 kbit/s; MPEG-2 (22.05 kHz) stops at 160.
MPEG1_RATES = (32000, 44100, 48000)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo if hi <= lo else rng.uniform(lo, hi))


def _one_pole(x: np.ndarray, a: float, order: int = 1) -> np.ndarray:
    """Low-pass ``x`` (shape (n,)) with ``order`` one-pole filters y[n] = (1-a) x[n] + a y[n-1].

    ``a`` in [0, 1); 0 leaves ``x`` as is. Returns float32, shape (n,).
    """
    if a <= 0:
        return x
    for _ in range(order):
        x = lfilter([1.0 - a], [1.0, -a], x)
    return x.astype(np.float32)


def _place(out: np.ndarray, kernel: np.ndarray, starts: np.ndarray, gains: np.ndarray) -> None:
    """Add ``kernel * gain`` into ``out`` at each start sample (clipped at the end)."""
    n = out.shape[0]
    for s, g in zip(starts, gains, strict=True):
        s = int(s)
        if s >= n:
            break
        m = min(kernel.shape[0], n - s)
        out[s : s + m] += g * kernel[:m]


def _harmonic_sum(phase: np.ndarray, n_harm: int, r: float) -> np.ndarray:
    """sum_{k=1..n_harm} r**(k-1) sin(k phase), shape like phase, float32.

    Uses the recurrence sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x): one sin and one
    cos instead of one sin per harmonic.
    """
    s1 = np.sin(phase, dtype=np.float32)
    two_cos = np.float32(2) * np.cos(phase, dtype=np.float32)
    total = s1.copy()
    prev, cur = np.zeros_like(s1), s1
    for k in range(2, n_harm + 1):
        prev, cur = cur, two_cos * cur - prev
        total += np.float32(r ** (k - 1)) * cur
    return total


def synthesize(
    styles: list[Style],
    rng: np.random.Generator,
    sample_rate: int,
    seconds: float,
    channels: int,
    true_stereo: bool = False,
) -> np.ndarray:
    """Synthesize one excerpt in the given style(s).

    Parameters
    ----------
    styles : list of Style
        One style, or several to mix (a track whose genres span several top genres).
    rng : numpy.random.Generator
        The only source of randomness.
    sample_rate : int
    seconds : float
    channels : int
        1 or 2.
    true_stereo : bool
        Stereo with different music in each channel (each its own voices, drums and noise),
        instead of one mix panned with a little width.

    Returns
    -------
    numpy.ndarray, shape (round(seconds * sample_rate), channels), float32
        Samples in [-1, 1] with a peak between about -1 and -7 dBFS.
    """
    if not styles:
        raise ValueError("synthesize needs at least one style")
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    n = int(round(seconds * sample_rate))
    if n <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    # Synthesize at (at most) SYNTH_RATE, then resample: half the work at 44.1 kHz.
    rate = min(SYNTH_RATE, int(sample_rate))
    n_int = int(round(seconds * rate))
    mono = np.zeros(n_int, dtype=np.float32)
    for style in styles:
        mono += _voice(style, rng, rate, n_int) / len(styles)
    if channels == 1:
        mix = mono[:, None]
    elif true_stereo:
        right = np.zeros(n_int, dtype=np.float32)
        for style in styles:
            right += _voice(style, rng, rate, n_int) / len(styles)
        mix = np.stack([mono, right], axis=1)
    else:
        pan = rng.uniform(-0.3, 0.3)
        width = np.float32(rng.uniform(0.0, 0.02)) * rng.standard_normal(n_int, dtype=np.float32)
        mix = np.stack([mono * np.float32(1 - pan) + width, mono * np.float32(1 + pan) - width], axis=1)
    if rate != sample_rate:
        mix = soxr.resample(mix, rate, int(sample_rate), quality="MQ")
    mix = mix[:n] if mix.shape[0] >= n else np.pad(mix, ((0, n - mix.shape[0]), (0, 0)))
    peak = float(np.max(np.abs(mix))) or 1.0
    mix = mix * np.float32(10 ** (-rng.uniform(1.0, 7.0) / 20) / peak)
    return np.ascontiguousarray(mix, dtype=np.float32)


@dataclass(frozen=True)
class Master:
    """How a track was mastered, beyond its format: what real releases vary in.

    Attributes
    ----------
    level : str
        ``normal`` (peak -1 .. -7 dBFS, as synthesized), ``loud`` (driven ``drive_db`` above full
        scale into a hard clip, as "loudness war" masters are: MP3 decoding then overshoots to
        peaks of 1.0 .. 1.4) or ``quiet`` (peak at ``peak_dbfs``).
    drive_db : float
        Loud masters: gain over full scale before the clip (6 .. 20 dB).
    peak_dbfs : float
        Quiet masters: the peak level (e.g. -45 dBFS).
    dc_offset : float
        A constant added to every sample (a DC offset from cheap converters).
    lead_in_s : float
        Digital silence before the music starts (the track keeps its length).
    """

    level: str = "normal"
    drive_db: float = 0.0
    peak_dbfs: float = 0.0
    dc_offset: float = 0.0
    lead_in_s: float = 0.0

    def __post_init__(self) -> None:
        if self.level not in ("normal", "loud", "quiet"):
            raise ValueError(f"level must be normal, loud or quiet, got {self.level!r}")


def apply_master(samples: np.ndarray, sample_rate: int, master: Master) -> np.ndarray:
    """The mastered track: level, clip, DC offset and lead-in applied to synthesized samples.

    Parameters
    ----------
    samples : np.ndarray, shape (n, channels), float32
    sample_rate : int
    master : Master

    Returns
    -------
    np.ndarray, shape (n, channels), float32, within [-1, 1] (what a 16-bit master can hold)
    """
    x = samples
    peak = float(np.max(np.abs(x))) or 1.0
    if master.level == "loud":
        x = np.clip(x * np.float32(10 ** (master.drive_db / 20) / peak), -1.0, 1.0)
    elif master.level == "quiet":
        x = x * np.float32(10 ** (master.peak_dbfs / 20) / peak)
    if master.dc_offset:
        x = np.clip(x + np.float32(master.dc_offset), -1.0, 1.0)
    lead = min(int(master.lead_in_s * sample_rate), x.shape[0])
    if lead > 0:
        x = np.concatenate([np.zeros((lead, x.shape[1]), np.float32), x[: x.shape[0] - lead]])
    return np.ascontiguousarray(x, dtype=np.float32)


# Real "loudness war" masters decode to peaks of up to ~1.4 (inter-sample overshoot of a clipped
# master through MP3's band limit); a generated loud master is driven less where it would pass this.
MAX_LOUD_PEAK = 1.4
MIN_LOUD_DRIVE_DB = 6.0


def decoded_peak(mp3: bytes) -> float:
    """The largest absolute sample of an MP3 stream decoded to float (libsndfile + mpg123, unclamped)."""
    import soundfile

    samples, _ = soundfile.read(io.BytesIO(mp3), dtype="float32")
    return float(np.abs(samples).max()) if samples.size else 0.0


def master_and_encode(
    samples: np.ndarray, sample_rate: int, master: Master, bitrate_kbps: int, vbr: bool, xing: bool = True
) -> tuple[bytes, Master]:
    """:func:`apply_master` then :func:`encode_mp3`; a loud master whose decoded peak would pass
    :data:`MAX_LOUD_PEAK` is driven 2 dB less, again until it does not (or the drive is 6 dB).

    Parameters
    ----------
    samples : np.ndarray, shape (n, channels), float32, as :func:`synthesize` gives them

    Returns
    -------
    (bytes, Master)
        The MP3 stream and the master it was made with (``drive_db`` as finally used).
    """
    while True:
        mp3 = encode_mp3(
            apply_master(samples, sample_rate, master), sample_rate, bitrate_kbps, vbr, xing=xing
        )
        if (
            master.level != "loud"
            or master.drive_db <= MIN_LOUD_DRIVE_DB
            or decoded_peak(mp3) <= MAX_LOUD_PEAK
        ):
            return mp3, master
        master = replace(master, drive_db=max(MIN_LOUD_DRIVE_DB, master.drive_db - 2.0))


def _voice(style: Style, rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    """One style's contribution, shape (n,) float32, peak around 1 (not normalised)."""
    t_step = 60.0 / _uniform(rng, style.tempo) / int(rng.choice(style.notes_per_beat))
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    idx = (t / np.float32(t_step)).astype(np.int64)  # note index per sample
    n_notes = int(idx[-1]) + 1
    t_in = t - idx.astype(np.float32) * np.float32(t_step)  # time inside the note, s

    # Melody: a random walk on a pentatonic scale inside the pitch range.
    lo, hi = style.pitch
    centre = rng.uniform(lo, hi)
    span = rng.uniform(0.4, 1.0) * (hi - lo) / 2
    scale = np.array([0, 2, 4, 7, 9])
    walk = np.cumsum(rng.integers(-2, 3, n_notes))
    degree = np.clip(walk - walk.mean(), -span / 2.4, span / 2.4)  # ~2.4 semitones per scale step
    octave, step = np.divmod(np.round(degree).astype(int), 5)
    midi = centre + 12 * octave + scale[step]
    if rng.random() < 0.25:  # some rests
        rest = rng.random(n_notes) < rng.uniform(0.05, 0.3)
    else:
        rest = np.zeros(n_notes, dtype=bool)
    decay = max(_uniform(rng, style.legato) * t_step, 0.01)
    env = np.exp(t_in * np.float32(-1 / decay)) * (1 - np.exp(t_in * np.float32(-1 / 0.005)))
    env[rest[idx]] = 0

    vib_depth = _uniform(rng, style.vibrato)
    vib_rate = rng.uniform(4.5, 6.5)
    vib = np.sin(np.float32(2 * np.pi * vib_rate) * t) if vib_depth > 0 else None
    if style.speech:  # gliding pitch, syllable gating at the note rate
        glide = np.interp(np.arange(n), np.linspace(0, n, 12), rng.uniform(-3, 3, 12))
        f_speech = 440.0 * 2 ** ((centre + glide - 69) / 12)
        speech_phase = np.mod((2 * np.pi / sr) * np.cumsum(f_speech), 2 * np.pi).astype(np.float32)
        voiced = (rng.random(n_notes) < 0.8)[idx]
        env = (voiced * np.sin(np.float32(np.pi) * np.minimum(t_in / t_step, 1.0)) ** 2).astype(np.float32)

    r = _uniform(rng, style.brightness)
    out = np.zeros(n, dtype=np.float32)
    for v, interval in enumerate((0, 4, 7)[: style.chord]):
        f_note = 440.0 * 2 ** ((midi + interval - 69) / 12)  # per note, Hz
        if style.speech:
            phase, f_max = speech_phase, float(f_speech.max())
        else:  # each note starts at phase 0 (its attack hides the jump)
            phase = (2 * np.pi * f_note).astype(np.float32)[idx] * t_in
            if vib is not None:  # phase modulation ~ vib_depth semitones of frequency modulation
                phase += (0.0578 * vib_depth * f_note / vib_rate).astype(np.float32)[idx] * vib
            f_max = float(f_note.max())
        n_harm = style.harmonics if v == 0 else max(2, style.harmonics // 2)
        n_harm = max(1, min(n_harm, int(sr / 2 / f_max)))  # stay below Nyquist
        out += np.float32(1.0 if v == 0 else 0.5) * _harmonic_sum(phase, n_harm, r)
    out *= env

    beats = np.arange(0, n, t_step * sr)  # start sample of every melody step
    # Bass: root note an octave or two down, once per step, two harmonics.
    bass = _uniform(rng, style.bass)
    if bass > 0:
        ph = (2 * np.pi * 440.0 * 2 ** ((midi - 24 - 69) / 12)).astype(np.float32)[idx] * t_in
        out += (
            np.float32(bass)
            * (np.sin(ph) + np.float32(0.3) * np.sin(2 * ph))
            * np.exp(t_in * np.float32(-0.5 / decay))
        )

    # Drums: kick on steps 0, 4, ...; snare on 2, 6, ...; hi-hat on every step.
    kick, snare, hat = _uniform(rng, style.kick), _uniform(rng, style.snare), _uniform(rng, style.hat)
    if kick > 0:
        kt = np.arange(int(0.18 * sr)) / sr
        sweep = 50 * kt + 100 * 0.03 * (1 - np.exp(-kt / 0.03))  # 150 Hz falling to 50 Hz
        kernel = (np.sin(2 * np.pi * sweep) * np.exp(-kt / 0.06)).astype(np.float32)
        starts = beats[::4] if rng.random() < 0.7 else beats[::2]
        _place(out, kernel, starts, kick * rng.uniform(0.8, 1.0, starts.shape[0]))
    if snare > 0:
        m = int(0.12 * sr)
        kernel = (rng.standard_normal(m) * np.exp(-np.arange(m) / (0.04 * sr))).astype(np.float32)
        starts = beats[2::4]
        _place(out, 0.6 * kernel, starts, snare * rng.uniform(0.8, 1.0, starts.shape[0]))
    if hat > 0:
        m = int(0.03 * sr)
        noise = rng.standard_normal(m + 1)
        kernel = (np.diff(noise) * np.exp(-np.arange(m) / (0.008 * sr))).astype(np.float32)
        _place(out, 0.4 * kernel, beats, hat * rng.uniform(0.5, 1.0, beats.shape[0]))

    noise_level = _uniform(rng, style.noise)
    if noise_level > 0:
        out += noise_level * _one_pole(
            rng.standard_normal(n).astype(np.float32), _uniform(rng, style.noise_colour)
        )
    clicks = _uniform(rng, style.crackle)
    if clicks > 0:
        k = rng.poisson(clicks * n / sr)
        pos = rng.integers(0, n, k)
        out[pos] += rng.uniform(-1.5, 1.5, k).astype(np.float32)
    lp = _uniform(rng, style.lowpass)
    if lp > 0:
        out = _one_pole(out, lp, order=2)
    return out


def encode_mp3(
    samples: np.ndarray, sample_rate: int, bitrate_kbps: int, vbr: bool, xing: bool = True
) -> bytes:
    """Encode float samples as MP3 with LAME (fast quality setting).

    Parameters
    ----------
    samples : numpy.ndarray, shape (n, channels), float
        Values in [-1, 1]; channels 1 or 2.
    sample_rate : int
    bitrate_kbps : int
        Constant bit rate; for ``vbr`` the VBR quality is derived from it (higher = better).
    vbr : bool
    xing : bool
        VBR only: put a Xing header frame in front (LAME's files have one; some encoders' don't,
        and then readers estimate the length from the first frame's bit rate).

    Returns
    -------
    bytes
        The MP3 stream (no ID3 tag). LAME embeds no time stamps, so equal input gives equal bytes.
        Stereo at 128 kbit/s and below comes out joint stereo (mid/side), above it plain stereo.
    """
    if samples.ndim != 2 or samples.shape[1] not in (1, 2):
        raise ValueError(f"samples must have shape (n, 1|2), got {samples.shape}")
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    enc = lameenc.Encoder()
    enc.silence()
    enc.set_in_sample_rate(int(sample_rate))
    enc.set_channels(int(samples.shape[1]))
    enc.set_quality(7)
    if vbr:
        enc.set_vbr(4)
        enc.set_vbr_quality(2 if bitrate_kbps >= 192 else 5)
    else:
        enc.set_bit_rate(int(bitrate_kbps))
    stream = bytes(enc.encode(np.ascontiguousarray(pcm).tobytes()) + enc.flush())
    return add_xing_header(stream) if vbr and xing else stream


def cover_png(rng: np.random.Generator, size: int = 32) -> bytes:
    """A small deterministic PNG (RGB gradient with noise) for ID3 cover art."""
    y, x = np.mgrid[0:size, 0:size]
    base = rng.integers(0, 256, 3)
    img = (
        base[None, None, :] + 3 * x[..., None] + 2 * y[..., None] + rng.integers(0, 30, (size, size, 3))
    ) % 256
    raw = b"".join(b"\x00" + img[row].astype(np.uint8).tobytes() for row in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def id3_tag(
    title: str, artist: str, album: str, genre: str | None, track_number: int, year: int, cover: bytes | None
) -> bytes:
    """The bytes of an ID3v2.4 tag (to put in front of an MP3 stream).

    mutagen writes no time stamps, so equal arguments give equal bytes.
    """
    from mutagen.id3 import APIC, ID3, TALB, TCON, TDRC, TIT2, TPE1, TRCK

    tags = ID3()
    tags.add(TIT2(encoding=3, text=title))
    tags.add(TPE1(encoding=3, text=artist))
    tags.add(TALB(encoding=3, text=album))
    if genre:
        tags.add(TCON(encoding=3, text=genre))
    tags.add(TRCK(encoding=3, text=str(track_number)))
    tags.add(TDRC(encoding=3, text=str(year)))
    if cover is not None:
        tags.add(APIC(encoding=3, mime="image/png", type=3, desc="Cover", data=cover))
    buf = io.BytesIO()
    tags.save(buf, padding=lambda info: 0)
    return buf.getvalue()


def id3v1_tag(title: str, artist: str, album: str, year: int) -> bytes:
    """The 128 bytes of an ID3v1 tag (appended after the MP3 stream by many taggers)."""

    def field(text: str, size: int) -> bytes:
        return text.encode("latin-1", "replace")[:size].ljust(size, b"\x00")

    return b"TAG" + field(title, 30) + field(artist, 30) + field(album, 30) + field(str(year), 4) + bytes(31)


_CHANNEL_MODES = ("stereo", "joint_stereo", "dual_channel", "mono")
_MPEG_VERSIONS = {3: "1", 2: "2", 0: "2.5"}


def stream_info(mp3: bytes) -> tuple[str, str]:
    """(MPEG version "1" | "2" | "2.5", channel mode) from the first frame header of an MP3 stream.

    The channel mode is ``stereo``, ``joint_stereo``, ``dual_channel`` or ``mono``. The stream
    starts with a frame (no ID3 tag in front); a Xing frame carries the mode of the stream.
    """
    _frame_info(mp3[:4])  # raises if it is not a layer III frame header
    return _MPEG_VERSIONS[(mp3[1] >> 3) & 3], _CHANNEL_MODES[mp3[3] >> 6]


# Layer III bit rates (kbit/s) by bitrate index, for MPEG-1 and for MPEG-2/2.5.
_BITRATES = {
    "mpeg1": (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    "mpeg2": (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_SAMPLE_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _frame_info(header: bytes) -> tuple[int, bool, bool]:
    """(frame length in bytes, is MPEG-1, is mono) of a layer III frame header (4 bytes)."""
    b1, b2, b3 = header[1], header[2], header[3]
    version = (b1 >> 3) & 3
    if header[0] != 0xFF or (b1 & 0xE0) != 0xE0 or version == 1 or ((b1 >> 1) & 3) != 1:
        raise ValueError("not an MPEG layer III frame header")
    mpeg1 = version == 3
    kbps = _BITRATES["mpeg1" if mpeg1 else "mpeg2"][(b2 >> 4) & 15]
    sr = _SAMPLE_RATES[version][(b2 >> 2) & 3]
    length = (144 if mpeg1 else 72) * kbps * 1000 // sr + ((b2 >> 1) & 1)
    return length, mpeg1, (b3 >> 6) == 3


def add_xing_header(mp3: bytes) -> bytes:
    """Put a Xing VBR header frame (frame and byte counts) in front of a LAME stream.

    lameenc does not write one; without it, readers such as mutagen take the first frame's
    bit rate for the whole file and get the length of a VBR file wrong.
    """
    frames, pos = 0, 0
    while pos + 4 <= len(mp3):
        length, mpeg1, mono = _frame_info(mp3[pos : pos + 4])
        if length <= 0:
            raise ValueError(f"bad MP3 frame length at byte {pos}")
        frames += 1
        pos += length
    first = mp3[:4]
    _, mpeg1, mono = _frame_info(first)
    index = 9 if mpeg1 else 8  # 128 kbit/s (MPEG-1) / 64 kbit/s (MPEG-2): room for the Xing data
    header = bytes([0xFF, first[1] | 1, (index << 4) | (first[2] & 0x0C), first[3]])  # no CRC, no padding
    length, _, _ = _frame_info(header)
    side_info = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    xing = b"Xing" + struct.pack(">III", 3, frames + 1, len(mp3) + length)
    body = header + bytes(side_info) + xing
    return body + bytes(length - len(body)) + mp3
