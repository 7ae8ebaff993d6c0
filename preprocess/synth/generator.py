"""Generate a mini-FMA: a small dataset shaped exactly like the Free Music Archive.

    python -m preprocess.synth --out data/mini-fma --tracks 400 --seed 0

writes, under ``--out``::

    fma_metadata/tracks.csv     FMA's 52 columns, 3 header lines, list columns as Python literals
    fma_metadata/genres.csv     the 16 real top-level genres plus sub-genres
    fma_large/NNN/NNNNNN.mp3    real MP3s (30 s; mostly 44.1 kHz stereo 320 kbit/s, some 256/192/128
                                kbit/s, VBR, 48/32/22.05 kHz, mono; ID3 tags, some with cover art)
                                and what real releases have: loud masters (decoded peaks up to 1.4),
                                quiet ones, MPEG-2/2.5 (8-24 kHz), joint stereo, true stereo, DC
                                offset, silence lead-in, VBR without Xing header, ID3v1 tags, one
                                full-length (4 min) track
    synth_truth.json            what every track really is (genre, split, subset, kind of file, format)

Each top-level genre has its own mix of tempo, timbre, pitch range, noise and drums, with
variation inside the genre, so a CNN can learn them from log-mel images; each sub-genre changes
its parent's tempo, rhythm, register or timbre, so sub-genres differ too, and a track mixes one
voice per genre it carries (``tracks.csv``'s ``genres``). Genres are imbalanced
like FMA's (Rock and Electronic large, Easy Listening and Blues small). Subsets are nested
(small ⊂ medium ⊂ large), splits are training/validation/test (about 80/10/10, artist-filtered),
and some tracks have no ``genre_top``.

About 6 % of the tracks are bad like FMA's errata, each declared in synth_truth.json as its
"kind": zero_byte, truncated (the first 10 % of an MP3), random_bytes (not MP3 at all), short
(under 2 s), silence (digital silence encoded as MP3), missing (listed in tracks.csv, no file),
plus a few rows with real FMA errata ids (preprocess.fma) as zero-byte, random-byte or short
files. With 60 or more tracks every kind occurs at least once.

The same seed gives byte-identical files: every track is made from its own
``numpy.random.default_rng([seed, track_id])``, so tracks are generated in parallel.
Regenerating into a folder made by this command replaces it; any other non-empty
fma_metadata/ or fma_large/ there is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from preprocess.errors import SynthError
from preprocess.fma import (
    CLASS_NAMES,
    EMPTY_IDS,
    KNOWN_BAD,
    SHORT_IDS,
    TOP_GENRES,
    UNREADABLE_IDS,
    audio_relpath,
)
from preprocess.synth.meta import (
    TOP_ID,
    genre_ancestors,
    genre_root,
    genres_frame,
    genres_under,
    track_row,
    tracks_frame,
)
from shards.cli import add_logging_arguments, run_command

# Tracks with genre_top per genre in fma_medium (docs/fma.md): the imbalance we imitate.
FMA_MEDIUM_COUNTS = {
    "Rock": 7103,
    "Electronic": 6314,
    "Experimental": 2251,
    "Hip-Hop": 2201,
    "Folk": 1519,
    "Instrumental": 1350,
    "Pop": 1186,
    "International": 1018,
    "Classical": 619,
    "Old-Time / Historic": 510,
    "Jazz": 384,
    "Country": 178,
    "Soul-RnB": 154,
    "Spoken": 118,
    "Blues": 74,
    "Easy Listening": 21,
}
# fma_small's 8 balanced genres: only these can be in the small subset.
SMALL_GENRES = (
    "Electronic",
    "Experimental",
    "Folk",
    "Hip-Hop",
    "Instrumental",
    "International",
    "Pop",
    "Rock",
)
# Kinds of bad file, in the order they are handed out (so small sets get the common ones first).
BAD_KINDS = ("truncated", "silence", "random_bytes", "zero_byte", "short", "missing")
KINDS = ("good",) + BAD_KINDS
SECONDS = 30.0
TRUNCATE_KEEP = 0.10  # fraction of an MP3's bytes a truncated file keeps
MIN_TRACKS_ALL_KINDS = 60
MAX_TRACKS = 100_000  # track ids are drawn from FMA's id range (2..155999) without repeats
# Marks a folder this command is writing (so a run killed half-way can be regenerated over).
IN_PROGRESS = ".synth-in-progress"


# --------------------------------------------------------------------------- planning (pure)


def _bad_kinds(n_tracks: int, rng: np.random.Generator) -> tuple[list[str], list[tuple[int, str]]]:
    """Kinds of the generic bad files, and (real errata id, kind) rows."""
    if n_tracks < 10:
        return [], []
    if n_tracks < MIN_TRACKS_ALL_KINDS:
        n_bad = max(1, round(0.075 * n_tracks))
        return [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_bad)], []
    errata = [(int(rng.choice(UNREADABLE_IDS)), "random_bytes"), (int(rng.choice(EMPTY_IDS)), "zero_byte")]
    if n_tracks >= 150:
        errata.append((int(rng.choice(SHORT_IDS[:5])), "short"))
    # ~6.5 % bad in all; below ~125 tracks the one-of-each-kind guarantee makes it a little more.
    n_generic = max(len(BAD_KINDS), round(0.065 * n_tracks) - len(errata))
    return [BAD_KINDS[i % len(BAD_KINDS)] for i in range(n_generic)], errata


def _genre_counts(n_genre: int, rng: np.random.Generator) -> dict[str, int]:
    """Tracks per top genre: a floor for every genre, the rest imbalanced like fma_medium."""
    floor = min(8, max(1, n_genre // 30)) if n_genre >= 16 else 0
    counts = {g: floor for g in FMA_MEDIUM_COUNTS}
    rest = n_genre - floor * len(counts)
    weights = np.array(list(FMA_MEDIUM_COUNTS.values()), dtype=float)
    extra = rng.multinomial(rest, weights / weights.sum())
    for g, e in zip(FMA_MEDIUM_COUNTS, extra, strict=True):
        counts[g] += int(e)
    return counts


_SMALL_GENRE_SPLITS = (
    "training",
    "test",
    "training",
    "validation",
    "training",
    "training",
    "test",
    "training",
    "validation",
    "training",
)


def _genre_splits(counts: dict[str, int]) -> list[tuple[str, str]]:
    """(genre, split) for every genre track: ~10 % validation and test, at least 2 each from 6 tracks.

    Genres with fewer than 6 tracks take splits from a fixed cycle shared across genres, so a
    small set still has several genres in its test split.
    """
    out: list[tuple[str, str]] = []
    cycle = 0
    for genre, c in counts.items():
        if c >= 6:
            k = max(2, round(0.1 * c))
            out += [(genre, "validation")] * k + [(genre, "test")] * k + [(genre, "training")] * (c - 2 * k)
        else:
            for _ in range(c):
                out.append((genre, _SMALL_GENRE_SPLITS[cycle % len(_SMALL_GENRE_SPLITS)]))
                cycle += 1
    return out


def _audio_format(rng: np.random.Generator, forced: tuple | None) -> tuple[int, int, int, bool]:
    """(sample_rate, channels, bitrate_kbps, vbr) drawn like FMA's mix, or ``forced``."""
    if forced is not None:
        return forced
    sr = int(rng.choice([44100, 48000, 32000, 22050], p=[0.8, 0.08, 0.06, 0.06]))
    channels = 1 if rng.random() < 0.12 else 2
    if sr == 22050:  # MPEG-2 layer III: at most 160 kbit/s
        rate = rng.choice(["128", "64", "vbr"], p=[0.5, 0.3, 0.2])
    else:
        rate = rng.choice(["320", "256", "192", "128", "vbr"], p=[0.6, 0.15, 0.05, 0.08, 0.12])
    if rate == "vbr":
        return sr, channels, 192 if sr != 22050 else 96, True
    return sr, channels, int(rate), False


# (format, variant) pairs every set of >= 10 good tracks contains (as many as it has good tracks,
# in this order): FMA's common formats first, then what real releases have that plain clips lack.
_FORCED = (
    ((48000, 2, 320, False), {}),
    ((32000, 2, 320, False), {}),
    ((22050, 2, 128, False), {}),
    ((44100, 1, 320, False), {}),
    ((44100, 2, 256, False), {}),
    ((44100, 2, 128, False), {}),
    ((44100, 2, 192, True), {}),
    ((44100, 2, 320, False), {"master": {"level": "loud", "drive_db": 18.0}}),
    ((44100, 2, 128, False), {"master": {"level": "loud", "drive_db": 20.0}}),  # joint stereo
    ((16000, 1, 48, False), {}),  # MPEG-2, mono
    ((8000, 1, 24, False), {}),  # MPEG-2.5, mono
    ((44100, 2, 320, False), {"master": {"level": "quiet", "peak_dbfs": -45.0}}),
    ((24000, 2, 64, False), {}),  # MPEG-2, joint stereo
    ((11025, 2, 32, False), {}),  # MPEG-2.5, joint stereo
    ((44100, 2, 320, False), {"true_stereo": True}),
    ((44100, 2, 320, False), {"seconds": 240.0, "master": {"level": "loud", "drive_db": 12.0}}),  # full
    ((44100, 2, 320, False), {"master": {"level": "normal", "dc_offset": 0.05}}),
    ((44100, 2, 320, False), {"master": {"level": "normal", "lead_in_s": 3.0}}),
    ((44100, 2, 192, True), {"xing": False}),  # VBR without a Xing header
    ((12000, 1, 32, True), {}),  # MPEG-2.5 VBR
    ((48000, 2, 256, False), {"master": {"level": "loud", "drive_db": 8.0}, "id3v1": True}),
)


def _variant(rng: np.random.Generator, channels: int, forced: dict | None) -> dict:
    """Mastering and packaging of one good track: drawn (a few percent each), or ``forced``."""
    variant = {
        "master": {"level": "normal"},
        "true_stereo": False,
        "seconds": SECONDS,
        "xing": True,
        "id3v1": False,
    }
    if forced is not None:
        return {**variant, **forced}
    master = variant["master"]
    u = rng.random()
    if u < 0.12:  # ~1 in 7 real clips decode to peaks above full scale
        master.update(level="loud", drive_db=round(float(rng.uniform(6.0, 20.0)), 1))
    elif u < 0.15:
        master.update(level="quiet", peak_dbfs=round(float(rng.uniform(-50.0, -35.0)), 1))
    if rng.random() < 0.03:
        master["dc_offset"] = round(float(rng.choice([-1, 1]) * rng.uniform(0.02, 0.08)), 3)
    if rng.random() < 0.05:
        master["lead_in_s"] = round(float(rng.uniform(0.5, 3.0)), 2)
    variant["true_stereo"] = bool(channels == 2 and rng.random() < 0.1)
    variant["id3v1"] = bool(rng.random() < 0.2)
    return variant


def plan(n_tracks: int, seed: int) -> list[dict]:
    """Decide every track: id, kind, genres, split, subset, audio format, metadata fields.

    A pure function of ``(n_tracks, seed)``; the audio itself is made later per track.

    Returns
    -------
    list of dict
        One dict per track, sorted by track id.
    """
    if not 1 <= n_tracks <= MAX_TRACKS:
        raise ValueError(f"n_tracks must be between 1 and {MAX_TRACKS}, got {n_tracks}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    generic_bad, errata = _bad_kinds(n_tracks, rng)
    n_good = n_tracks - len(generic_bad) - len(errata)
    n_nogenre = round(0.12 * n_good) if n_good >= 16 else 0
    genre_splits = _genre_splits(_genre_counts(n_good - n_nogenre, rng))

    # Track ids: sparse and sorted like FMA's, never a real errata id (those come only from `errata`).
    pool = np.setdiff1d(np.arange(2, 156000), np.array(sorted(KNOWN_BAD)))
    n_random_ids = n_tracks - len(errata)
    ids = [int(i) for i in rng.choice(pool, n_random_ids, replace=False)]
    order = rng.permutation(n_random_ids)  # who gets which role

    specs: list[dict] = []
    roles: list[tuple[str, str | None, str | None]] = []  # (kind, genre_top, split or None)
    roles += [("good", g, s) for g, s in genre_splits]
    roles += [("good", None, None)] * n_nogenre
    genre_names = list(FMA_MEDIUM_COUNTS)
    weights = np.array(list(FMA_MEDIUM_COUNTS.values()), dtype=float) ** 0.5
    for kind in generic_bad:
        roles.append((kind, str(rng.choice(genre_names, p=weights / weights.sum())), None))
    for pos, (kind, genre_top, split) in zip(order, roles, strict=True):
        specs.append({"track_id": ids[pos], "kind": kind, "genre_top": genre_top, "split": split})
    for tid, kind in errata:
        genre_top = str(rng.choice(genre_names)) if rng.random() < 0.5 else None
        specs.append({"track_id": tid, "kind": kind, "genre_top": genre_top, "split": None, "errata": True})
    specs.sort(key=lambda s: s["track_id"])

    forced = list(_FORCED) if n_good >= 10 else []
    forced_cover = n_good >= 10
    good_positions = [i for i, s in enumerate(specs) if s["kind"] == "good"]
    forced_at = {
        good_positions[j]: f for j, f in zip(rng.permutation(len(good_positions)), forced, strict=False)
    }
    for i, spec in enumerate(specs):
        _fill_spec(spec, rng, forced_at.get(i))
        if forced_cover and spec["kind"] == "good":
            spec["cover_art"], forced_cover = True, False
    _assign_artists(specs, rng)
    return specs


def _fill_spec(spec: dict, rng: np.random.Generator, forced: tuple | None) -> None:
    """Add genres, split, subset, audio format and the csv's duration / bit rate to one spec."""
    kind, genre_top = spec["kind"], spec["genre_top"]
    names = list(FMA_MEDIUM_COUNTS)
    if genre_top is not None:
        under = genres_under(TOP_ID[genre_top])
        genres = sorted({int(g) for g in rng.choice(under, int(rng.integers(1, 3)))})
    elif rng.random() < 0.15:  # FMA has tracks with no genre at all
        genres = []
        no_genre_style = TOP_ID[str(rng.choice(names))]
    else:  # genres from two top genres: no genre_top, audio a mix of both
        a, b = rng.choice(names, 2, replace=False)
        genres = sorted(
            {int(rng.choice(genres_under(TOP_ID[str(a)]))), int(rng.choice(genres_under(TOP_ID[str(b)])))}
        )
    spec["genres"] = genres
    spec["genres_all"] = sorted({a for g in genres for a in genre_ancestors(g)})
    # The audio mixes one voice per genre of the track, each in its genre's own style (a sub-genre
    # sounds unlike its parent and its siblings: preprocess.synth.audio.SUB_STYLES).
    spec["styles"] = list(genres) if genres else [no_genre_style]
    if spec["split"] is None:
        spec["split"] = str(rng.choice(["training", "validation", "test"], p=[0.8, 0.1, 0.1]))
    u = rng.random()
    if genre_top is None:
        spec["subset"] = "large"
    elif genre_top in SMALL_GENRES and u < 0.35:
        spec["subset"] = "small"
    elif u < 0.65:
        spec["subset"] = "medium"
    else:
        spec["subset"] = "large"

    forced_format, forced_variant = forced if forced is not None else (None, None)
    if kind in ("good", "truncated", "short", "silence"):
        fmt = _audio_format(rng, forced_format) if kind == "good" else (44100, 2, 320, False)
        spec["sample_rate"], spec["channels"], spec["bitrate_kbps"], spec["vbr"] = fmt
    else:
        spec["sample_rate"] = spec["channels"] = spec["bitrate_kbps"] = spec["vbr"] = None
    spec["cover_art"] = bool(kind == "good" and rng.random() < 0.25)
    spec.update(
        _variant(rng, spec["channels"], forced_variant)
        if kind == "good"
        else {
            "master": {"level": "normal"},
            "true_stereo": False,
            "seconds": SECONDS,
            "xing": True,
            "id3v1": False,
        }
    )
    if kind == "short":
        spec["seconds"] = round(float(rng.uniform(0.5, 1.9)), 2)
    elif kind not in ("good", "truncated", "silence"):
        spec["seconds"] = None
    # track.duration: the full track's length from FMA's API (the file is a 30 s clip), sometimes wrong.
    if spec.get("errata"):
        duration = int(rng.integers(0, 400))
    elif kind == "good" and rng.random() < 0.03:
        duration = int(rng.integers(5, 29))  # wrong, as FMA's sometimes are
    else:
        duration = int(rng.integers(60, 600))
    if kind == "good" and spec["seconds"] > SECONDS:  # a full-length file: the csv gives its length
        duration = int(spec["seconds"])
    spec["csv_duration"] = duration
    spec["seed_key"] = int(rng.integers(0, 2**31))


def _assign_artists(specs: list[dict], rng: np.random.Generator) -> None:
    """Artist and album ids: tracks of one artist share split and genre (FMA's split is artist-filtered)."""
    groups: dict[tuple, list[dict]] = {}
    for s in specs:
        groups.setdefault((s["split"], s["genre_top"]), []).append(s)
    artist_id = int(rng.integers(1, 100))
    album_id = int(rng.integers(1, 100))
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        members = groups[key]
        i = 0
        while i < len(members):
            size = int(rng.integers(1, 5))
            artist_id += int(rng.integers(1, 50))
            album_id += int(rng.integers(1, 50))
            artist_name = _name(rng, 2)
            album_title = _name(rng, 3)
            for number, s in enumerate(members[i : i + size], start=1):
                s["artist_id"], s["artist"] = artist_id, artist_name
                no_album = rng.random() < 0.03
                s["album_id"] = -1 if no_album else album_id
                s["album"] = float("nan") if no_album else album_title
                s["number"] = -1 if no_album else number
                s["title"] = _name(rng, int(rng.integers(1, 4)))
                s["year"] = int(rng.integers(1995, 2018))
            i += size


_NAME_WORDS = (
    "Blue",
    "Night",
    "Échos",
    "Motör",
    "Sigur",
    "Kaffee",
    "Otoño",
    "Ghost",
    "River",
    "Ñandú",
    "Machine",
    "Static",
    "Λάμψη",
    "Hollow",
    "Dust",
    "Garden",
    "Le Chat",
    "O'Brien",
    'Mr. "X"',
)


def _name(rng: np.random.Generator, k: int) -> str:
    return " ".join(str(w) for w in rng.choice(_NAME_WORDS, k))


# --------------------------------------------------------------------------- one track's file


def make_track(fma_dir: str, spec: dict, seed: int) -> dict:
    """Write one track's file (or nothing, for ``missing``) and return its truth entry.

    The bytes depend only on ``(seed, spec)``. The file is written under a temporary name and
    renamed, so a killed generator never leaves a partial file under a final name.
    """
    from preprocess.synth.audio import (
        Master,
        cover_png,
        encode_mp3,
        genre_style,
        id3_tag,
        id3v1_tag,
        master_and_encode,
        stream_info,
        synthesize,
    )

    tid = spec["track_id"]
    rng = np.random.default_rng([int(seed), int(tid), spec["seed_key"]])
    rel = f"fma_large/{audio_relpath(tid)}"
    path = Path(fma_dir) / rel
    kind = spec["kind"]
    duration_s: float | None = None
    drive_db = spec["master"].get("drive_db")  # a loud master may end up driven less (master_and_encode)
    version = mode = None
    bitrate = spec["bitrate_kbps"]
    data: bytes | None
    if kind == "missing":
        data = None
    elif kind == "zero_byte":
        data = b""
    elif kind == "random_bytes":
        # No 0xFF byte, so no MP3 frame sync anywhere: no decoder finds a frame.
        data = rng.integers(0, 255, int(rng.integers(20_000, 400_000)), dtype=np.uint8).tobytes()
    else:
        sr, ch = spec["sample_rate"], spec["channels"]
        master = Master(**spec["master"])
        if kind == "silence":
            samples = np.zeros((int(spec["seconds"] * sr), ch), dtype=np.float32)
            mp3 = encode_mp3(samples, sr, bitrate, spec["vbr"], xing=spec["xing"])
        else:
            samples = synthesize(
                [genre_style(g) for g in spec["styles"]],
                rng,
                sr,
                spec["seconds"],
                ch,
                true_stereo=spec["true_stereo"],
            )
            mp3, master = master_and_encode(samples, sr, master, bitrate, spec["vbr"], xing=spec["xing"])
            if master.level == "loud":
                drive_db = master.drive_db
        version, mode = stream_info(mp3)
        duration_s = round(samples.shape[0] / sr, 4)
        if spec["vbr"]:
            bitrate = int(round(len(mp3) * 8 / duration_s / 1000))
        cover = cover_png(rng) if spec["cover_art"] else None
        tag = id3_tag(
            spec["title"],
            spec["artist"],
            spec["album"] if isinstance(spec["album"], str) else "",
            spec["genre_top"] or TOP_GENRES[genre_root(spec["styles"][0])],
            max(spec["number"], 1),
            spec["year"],
            cover,
        )
        data = tag + mp3
        if spec["id3v1"]:
            data += id3v1_tag(
                spec["title"],
                spec["artist"],
                spec["album"] if isinstance(spec["album"], str) else "",
                spec["year"],
            )
        if kind == "truncated":
            data = data[: int(len(data) * TRUNCATE_KEEP)]
            duration_s = round((len(data) - len(tag)) / len(mp3) * duration_s, 2)  # roughly what decodes
    if data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return {
        "genre_top": spec["genre_top"],
        "split": spec["split"],
        "subset": spec["subset"],
        "kind": kind,
        "sample_rate": spec["sample_rate"],
        "channels": spec["channels"],
        "bitrate_kbps": bitrate,
        "vbr": spec["vbr"],
        "duration_s": duration_s,
        "cover_art": spec["cover_art"],
        "path": rel,
        "mpeg_version": version,
        "channel_mode": mode,
        "master": spec["master"]["level"],
        "drive_db": drive_db,
        "peak_dbfs": spec["master"].get("peak_dbfs"),
        "dc_offset": spec["master"].get("dc_offset", 0.0),
        "lead_in_s": spec["master"].get("lead_in_s", 0.0),
        "true_stereo": spec["true_stereo"],
        "xing": bool(spec["vbr"] and spec["xing"]),
        "id3v1": spec["id3v1"],
    }


# --------------------------------------------------------------------------- driver


def _prepare_out_dir(out: Path) -> None:
    """Make ``out``; clear a previous generation there; refuse to touch anything else."""
    out.mkdir(parents=True, exist_ok=True)
    ours = (out / "synth_truth.json").is_file() or (out / IN_PROGRESS).is_file()
    for name in ("fma_metadata", "fma_large"):
        folder = out / name
        if folder.exists() and any(folder.iterdir()):
            if not ours:
                raise SynthError(
                    f"{folder} exists and was not made by preprocess.synth (no synth_truth.json in {out}). "
                    "It may be real FMA data: choose another --out, or remove it yourself."
                )
            shutil.rmtree(folder)
    (out / IN_PROGRESS).write_text("preprocess.synth is writing this folder\n", encoding="utf-8")
    (out / "synth_truth.json").unlink(missing_ok=True)


def generate(
    out_dir: str | os.PathLike, n_tracks: int, seed: int, jobs: int = -1, progress: bool = False
) -> dict:
    """Generate a mini-FMA under ``out_dir``; return the truth dict (also saved as synth_truth.json).

    Parameters
    ----------
    out_dir : path
        Created if needed. A previous generation there is replaced.
    n_tracks : int
        Rows in tracks.csv (good and bad files together).
    seed : int
        Same seed, same bytes.
    jobs : int
        Worker processes (joblib; -1 = all cores, 1 = in this process).
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``{"seed", "n_tracks", "tracks": {"<track_id>": {"genre_top", "split", "subset", "kind",
        "sample_rate", "channels", "bitrate_kbps", "vbr", "duration_s", "cover_art", "path",
        "mpeg_version", "channel_mode", "master", "drive_db", "peak_dbfs", "dc_offset", "lead_in_s",
        "true_stereo", "xing", "id3v1"}}}``.
        ``duration_s`` is the audio's real length (None where the file holds no audio:
        zero_byte, random_bytes, missing; approximate for truncated). ``sample_rate``,
        ``channels``, ``bitrate_kbps``, ``vbr``, ``mpeg_version`` ("1", "2", "2.5") and
        ``channel_mode`` (stereo, joint_stereo, mono) are None for those too; for VBR files
        ``bitrate_kbps`` is the mean bit rate. ``master`` is normal, loud (hard-clipped after
        ``drive_db`` of gain: decoded peaks 1.0 .. 1.4) or quiet (peak ``peak_dbfs``);
        ``lead_in_s`` seconds of digital silence open the track; ``true_stereo``: different
        music in each channel; ``xing``: a VBR file with a Xing header; ``id3v1``: an ID3v1
        tag after the audio.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from shards import atomic_path, atomic_write_text

    if (
        isinstance(n_tracks, bool)
        or not isinstance(n_tracks, (int, np.integer))
        or not (1 <= n_tracks <= MAX_TRACKS)
    ):
        raise SynthError(f"n_tracks (--tracks) must be an integer from 1 to {MAX_TRACKS}, got {n_tracks!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed (--seed) must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    specs = plan(int(n_tracks), int(seed))

    tasks = (delayed(make_track)(str(out), spec, int(seed)) for spec in specs)
    results = Parallel(n_jobs=jobs, return_as="generator", batch_size=4)(tasks)
    entries = list(tqdm(results, total=len(specs), desc="tracks", unit="track", disable=not progress))

    rows = {}
    for spec, entry in zip(specs, entries, strict=True):
        bit_rate = (
            entry["bitrate_kbps"] * 1000
            if entry["bitrate_kbps"]
            else int(np.random.default_rng([int(seed), spec["track_id"]]).choice([320000, 256000]))
        )
        rows[spec["track_id"]] = track_row(
            np.random.default_rng([int(seed), spec["track_id"], 1]),
            track_id=spec["track_id"],
            artist_id=spec["artist_id"],
            album_id=spec["album_id"],
            title=spec["title"],
            artist=spec["artist"],
            album=spec["album"],
            split=spec["split"],
            subset=spec["subset"],
            genre_top=spec["genre_top"],
            genres=spec["genres"],
            genres_all=spec["genres_all"],
            bit_rate=bit_rate,
            duration=spec["csv_duration"],
            number=spec["number"],
        )
    meta = out / "fma_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    with atomic_path(meta / "tracks.csv") as tmp:
        tracks_frame(rows).to_csv(tmp)
    with atomic_path(meta / "genres.csv") as tmp:
        genres_frame([s["genres_all"] for s in specs]).to_csv(tmp)

    truth = {
        "seed": int(seed),
        "n_tracks": int(n_tracks),
        "tracks": {str(s["track_id"]): e for s, e in zip(specs, entries, strict=True)},
    }
    atomic_write_text(out / "synth_truth.json", json.dumps(truth, indent=1, ensure_ascii=False) + "\n")
    (out / IN_PROGRESS).unlink()
    return truth


def summary(truth: dict) -> str:
    """A few lines describing a generated set: counts by kind, split, subset and genre."""
    tracks = truth["tracks"].values()

    def count(key: str, order) -> str:
        vals = [t[key] for t in tracks]
        return ", ".join(f"{k} {vals.count(k)}" for k in order if vals.count(k))

    genres = ", ".join(f"{g} {sum(t['genre_top'] == g for t in tracks)}" for g in CLASS_NAMES)
    no_top = sum(t["genre_top"] is None for t in tracks)
    return "\n".join(
        [
            f"{truth['n_tracks']} tracks (seed {truth['seed']})",
            f"  kind:   {count('kind', KINDS)}",
            f"  split:  {count('split', ('training', 'validation', 'test'))}",
            f"  subset: {count('subset', ('small', 'medium', 'large'))}",
            f"  genre_top: {genres}, none {no_top}",
        ]
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m preprocess.synth",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder to write (gets fma_metadata/, fma_large/, synth_truth.json)",
    )
    parser.add_argument(
        "--tracks",
        type=int,
        default=400,
        help="rows in tracks.csv, good and bad files together (default 400)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument(
        "--jobs", type=int, default=-1, help="worker processes (default -1: all cores; 1: no pool)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m preprocess.synth``: 0 written; a bad --out, --tracks or --seed is one line, exit 2."""
    parser = build_parser()
    add_logging_arguments(parser)
    return run_command(_generate_command, parser.parse_args(argv))


def _generate_command(args: argparse.Namespace) -> int:
    from shards.cli import progress_disabled

    start = time.perf_counter()
    truth = generate(args.out, args.tracks, args.seed, jobs=args.jobs, progress=not progress_disabled())
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")
    print(summary(truth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
