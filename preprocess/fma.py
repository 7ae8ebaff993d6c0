"""Facts about the FMA dataset that code on both the generator and the reader side needs.

Sources: the dataset's repository (mdeff/fma ``utils.py``, its issues) and paper.
"""

from __future__ import annotations

import os
from pathlib import Path

SUBSETS = ("small", "medium", "large")  # nested: small ⊂ medium ⊂ large
SPLITS = ("training", "validation", "test")  # values of ('set', 'split') in tracks.csv

# The 16 top-level genres (genre_id: title), as in genres.csv where parent == 0.
TOP_GENRES = {
    2: "International",
    3: "Blues",
    4: "Jazz",
    5: "Classical",
    8: "Old-Time / Historic",
    9: "Country",
    10: "Pop",
    12: "Rock",
    13: "Easy Listening",
    14: "Soul-RnB",
    15: "Electronic",
    17: "Folk",
    20: "Spoken",
    21: "Hip-Hop",
    38: "Experimental",
    1235: "Instrumental",
}

# Class index = position in the sorted list of names (the reference project used
# scikit-learn's LabelEncoder, which sorts).
CLASS_NAMES = tuple(sorted(TOP_GENRES.values()))

# Excerpts that are empty (0 s) in FMA (mdeff/fma issues on wrong API durations).
EMPTY_IDS = (
    1486,
    5574,
    65753,
    80391,
    98558,
    98559,
    98560,
    98571,
    99134,
    105247,
    108925,
    126981,
    127336,
    133297,
    143992,
)
# Excerpts much shorter than 30 s (seconds in the comment).
SHORT_IDS = (98565, 98566, 98567, 98568, 98569, 108924)  # 1.6, 6.2, 0.5, 6.6, 1.5, 27.4
# fma_large files that ffmpeg and librosa could not open (mdeff/fma issue #49).
UNREADABLE_IDS = (
    2624,
    3284,
    8669,
    10116,
    11583,
    12838,
    13529,
    14116,
    14180,
    20814,
    22554,
    23429,
    23430,
    23431,
    25173,
    25174,
    25175,
    25176,
    25180,
    29345,
    29346,
    29352,
    29356,
    33411,
    33413,
    33414,
    33417,
    33418,
    33419,
    33425,
    35725,
    39363,
    41745,
    42986,
    43753,
    50594,
    50782,
    53668,
    54569,
    54582,
    61480,
    61822,
    63422,
    63997,
    72656,
    72980,
    73510,
    80553,
    82699,
    84503,
    84504,
    84522,
    84524,
    86656,
    86659,
    86661,
    86664,
    87057,
    90244,
    90245,
    90247,
    90248,
    90250,
    90252,
    90253,
    90442,
    90445,
    91206,
    92479,
    94052,
    94234,
    95253,
    96203,
    96207,
    96210,
    98105,
    98562,
    101265,
    101272,
    101275,
    102241,
    102243,
    102247,
    102249,
    102289,
    106409,
    106412,
    106415,
    106628,
    108920,
    109266,
    110236,
    115610,
    117441,
    127928,
    129207,
    129800,
    130328,
    130748,
    130751,
    131545,
    133641,
    133647,
    134887,
    *range(140449, 140473),
    142614,
    144518,
    144619,
    145056,
    146056,
    147419,
    147424,
    *range(148786, 148796),
    151920,
    155051,
)

# id -> reason, for the known-bad skip list of the features stage.
KNOWN_BAD = {
    **{i: "known bad: unreadable (FMA issue #49)" for i in UNREADABLE_IDS},
    **{i: "known bad: short excerpt" for i in SHORT_IDS},
    **{i: "known bad: empty excerpt" for i in EMPTY_IDS},
}


def audio_relpath(track_id: int) -> str:
    """``NNN/NNNNNN.mp3``: the track id zero-padded to 6 digits, folder = first 3."""
    tid = f"{int(track_id):06d}"
    return f"{tid[:3]}/{tid}.mp3"


def audio_dir(fma_dir: str | os.PathLike, subset: str) -> Path:
    """The folder holding a subset's MP3s: ``fma_<subset>/``, or a larger subset's.

    Subsets are nested, so ``fma_large/`` also holds every medium and small track.
    Returns the first of ``fma_<subset>``, then the larger ones, that exists;
    ``fma_<subset>`` if none does (the caller reports it missing).
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    root = Path(fma_dir)
    for name in SUBSETS[SUBSETS.index(subset) :]:
        if (root / f"fma_{name}").is_dir():
            return root / f"fma_{name}"
    return root / f"fma_{subset}"
