"""A realistic check outside CI: real music from Debian packages, as a 16-genre FMA-shaped set.

The generated mini-FMA's genres are separable by construction; real recordings are not. This
builds a small set of *real* music, laid out exactly like FMA (``fma_metadata/tracks.csv`` with
FMA's 52 columns, ``fma_large/NNN/NNNNNN.mp3`` 30 s clips), so the whole pipeline
(``python -m preprocess features``, ``python -m train fit``, ``bench/probe.py``) runs on it
unchanged. The music comes from game soundtracks that Debian ships in ``main`` (free licences,
each package's ``/usr/share/doc/PKG/copyright`` has the details), one package per class, in
:data:`SOURCES` (package, the folders of its music, style, licence): Wesnoth, Warzone 2100,
Nexuiz, Hedgewars, UFO: Alien Invasion, Planet Blupi, Endgame: Singularity, SuperTux,
SuperTuxKart, Widelands, Drascula, FreedroidRPG, HyperRogue, MegaGlest, FreeCol and
Extreme Tux Racer.

A class is a *source* (one soundtrack, one or a few composers), given one of FMA's 16 genre
names so that the pipeline's labels fit; the names mean nothing musically here. What real
recordings have that generated ones lack, and how the builder handles it:

* game music loops and comes in variants (``farm`` / ``farm_f``, ``forest`` / ``forest2``,
  ``track3`` / ``track3_enhanced``): variants of one piece form one *group* and a group's clips
  all go to one split (:func:`group_key`), so no test clip has a near-copy in training;
* byte-identical files under two names are kept once (sha256);
* silence and fades: clips quieter than :data:`MIN_RMS` are dropped;
* real imbalance: classes get what their packages hold (capped per recording and per class),
  from ~20 to ~150 clips;
* real encodings: Vorbis/Opus sources at 22.05-48 kHz, mono and stereo, re-encoded to MP3 at
  FMA's mix of bit rates (mostly 320 kbit/s, some 256/192/128).

Split: per class, groups are shuffled (seeded) and taken into ``test`` until it holds at least
15 % of the class's clips, then ``validation`` likewise, the rest ``training``; every class has at
least one group in each split. Several 30 s clips are cut from each recording (up to
``--clips-per-recording``, evenly spaced), as FMA's full-length tracks would give.

Rerun (needs ``apt-get`` with Debian bookworm's ``main`` reachable, ~2.9 GB of .deb files, and the
``synth`` extra for lameenc/mutagen)::

    python bench/realmusic.py --work /work/realmusic            # download, unpack, build fma/
    python -m preprocess features --fma-dir /work/realmusic/fma --subset large \\
        --out /work/realmusic/shards --jobs 2
    python bench/probe.py --shards /work/realmusic/shards        # the baseline every figure needs

``--work`` gets ``debs/`` (the downloaded packages), ``extract/`` (unpacked) and ``fma/`` (the
FMA-shaped set, with ``realmusic.json``: every clip's source file, offset, group and split, and
the package versions used). The same packages and seed give the same clips.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from preprocess.fma import CLASS_NAMES, audio_relpath  # noqa: E402
from preprocess.synth.meta import TOP_ID, genres_frame, track_row, tracks_frame  # noqa: E402

CLIP_SECONDS = 30.0
MIN_RMS = 0.003  # ~ -50 dBFS: a clip quieter than this is silence or a fade, not music
FIRST_TRACK_ID = 200_000  # above FMA's ids (2..155,999): no clash with FMA's known-bad ids
AUDIO_SUFFIXES = (".ogg", ".opus", ".mp3", ".wav", ".flac")
# FMA's mix of bit rates (kbit/s) and how often each occurs.
BITRATES = ((320, 0.7), (256, 0.15), (192, 0.1), (128, 0.05))
TEST_FRACTION = 0.15
VALIDATION_FRACTION = 0.15


@dataclass(frozen=True)
class Source:
    """One class: a Debian package and the folders (globs under the unpacked package) of its music."""

    package: str
    globs: tuple[str, ...]
    style: str
    licence: str


# 16 sources, one per FMA genre name (in CLASS_NAMES order). Globs avoid sound effects, speech,
# ambience and copies in other languages.
SOURCES: tuple[Source, ...] = (
    Source(
        "wesnoth-1.16-music",
        ("usr/share/games/wesnoth/1.16/data/core/music/*.ogg",),
        "orchestral fantasy",
        "GPL-2+",
    ),
    Source(
        "warzone2100-music",
        ("usr/share/games/warzone2100/music/**/*.opus",),
        "electronic / orchestral sci-fi, three albums",
        "GPL-2+ / CC-BY-SA",
    ),
    Source(
        "nexuiz-music",
        ("usr/share/games/nexuiz/data/music.pk3.d/sound/cdtracks/*.ogg",),
        "electronic, industrial, rock",
        "GPL-2+",
    ),
    Source(
        "hedgewars-data",
        ("usr/share/games/hedgewars/Data/Music/*.ogg",),
        "light comic themes (oriental, pirate, snow ...)",
        "GPL-2 / CC",
    ),
    Source(
        "ufoai-music",
        ("usr/share/games/ufoai/base/0music.pk3.d/music/*.ogg",),
        "sci-fi orchestral and ambient, several composers",
        "GPL-2+ / CC-BY-SA-3.0",
    ),
    Source(
        "planetblupi-music-ogg", ("usr/share/planetblupi/music/*.ogg",), "children's game music", "GPL-3+"
    ),
    Source(
        "singularity-music",
        ("usr/share/games/singularity/music/**/*.ogg",),
        "electronic / piano ambient (Max McCracken)",
        "CC-BY-SA",
    ),
    Source(
        "supertux-data",
        ("usr/share/games/supertux2/music/**/*.ogg",),
        "chiptune, synth pop",
        "GPL-2+ / CC-BY-SA",
    ),
    Source(
        "supertuxkart-data",
        ("usr/share/games/supertuxkart/data/music/*.ogg",),
        "pop, rock, electronic racing themes",
        "CC-BY-SA / CC-BY / CC0",
    ),
    Source(
        "widelands-data", ("usr/share/games/widelands/data/music/*.ogg",), "orchestral / medieval", "GPL-2+"
    ),
    Source(
        "drascula-music",
        ("usr/share/scummvm/drascula/audio/*.ogg",),
        "1990s adventure game score",
        "Drascula licence (BSD-like)",
    ),
    Source(
        "freedroidrpg-data",
        ("usr/share/freedroidrpg/data/sound/music/*.ogg",),
        "dark electronic / ambient",
        "GPL-2+",
    ),
    Source("hyperrogue-music", ("usr/share/hyperrogue/music/*.ogg",), "ambient, world", "CC-BY-SA-3.0"),
    Source(
        "megaglest-data",
        (
            "usr/share/games/megaglest/techs/megapack/factions/*/music/*.ogg",
            "usr/share/games/megaglest/data/core/menu/music/*.ogg",
        ),
        "faction themes: Egyptian, Indian, Norse, Persian, Roman ...",
        "CC-BY-SA-3.0",
    ),
    Source(
        "freecol",
        ("usr/share/games/freecol/default/resources/music/default/*.ogg",),
        "period / orchestral",
        "GPL-2+ / CC-BY-SA",
    ),
    Source("extremetuxracer-data", ("usr/share/games/etr/music/*.ogg",), "light pop / electronic", "GPL-2+"),
)
if len(SOURCES) != len(CLASS_NAMES):  # pragma: no cover - a programming error, caught on import
    raise RuntimeError("SOURCES must have one entry per FMA genre")

_VARIANT_SUFFIX = re.compile(r"[-_ ]*(fast|f|raw|remix|remake|old|enhanced|revisited)$")
_NUMBERED = re.compile(r"^(.*[a-z])[-_ ]?([2-9])$")


@dataclass(frozen=True)
class Recording:
    """One audio file of a source, with what ``soundfile.info`` says about it."""

    source: int
    path: str
    seconds: float
    sample_rate: int
    sha256: str


@dataclass(frozen=True)
class Clip:
    """One 30 s clip to write: which recording, where in it, its group, split and track id."""

    track_id: int
    source: int
    path: str
    offset_s: float
    recording_seconds: float
    group: str
    split: str
    bitrate_kbps: int


# --------------------------------------------------------------------------- planning (pure)


def group_key(stem: str, stems: set[str]) -> str:
    """The piece a file is a variant of: ``farm_f`` -> ``farm``; ``forest2`` -> ``forest`` if a
    ``forest`` exists among ``stems`` (lower-cased, suffix-stripped); ``ingame_07`` stays itself.
    """
    key = stem.lower()
    while True:
        stripped = _VARIANT_SUFFIX.sub("", key).rstrip("-_ ")
        if stripped == key or not stripped:
            break
        key = stripped
    m = _NUMBERED.match(key)
    if m and m.group(1).rstrip("-_ ") in stems:
        key = m.group(1).rstrip("-_ ")
    return key


def window_offsets(seconds: float, max_clips: int) -> list[float]:
    """Start times (s) of up to ``max_clips`` non-overlapping 30 s windows, evenly spread."""
    n = int(seconds // CLIP_SECONDS)
    if n <= 0:
        return []
    picks = np.unique(np.round(np.linspace(0, n - 1, min(n, max_clips))).astype(int))
    slack = (seconds - n * CLIP_SECONDS) / 2  # centre the windows in the recording
    return [round(slack + float(i) * CLIP_SECONDS, 3) for i in picks]


def _clips_per_recording(recordings: list[Recording], max_per_recording: int, max_per_class: int) -> int:
    """The largest per-recording count k <= max_per_recording whose class total fits max_per_class."""
    for k in range(max_per_recording, 0, -1):
        if sum(len(window_offsets(r.seconds, k)) for r in recordings) <= max_per_class:
            return k
    return 1


def _assign_splits(groups: dict[str, int], rng: np.random.Generator) -> dict[str, str]:
    """group -> split: shuffled groups into test, then validation (>= their fractions), rest training."""
    order = sorted(groups)
    rng.shuffle(order)
    total = sum(groups.values())
    out: dict[str, str] = {}
    taken = {"test": 0, "validation": 0}
    for g in order:
        if len(order) - len(out) <= 1:  # keep at least one group for training
            out[g] = "training"
        elif taken["test"] < TEST_FRACTION * total:
            out[g], taken["test"] = "test", taken["test"] + groups[g]
        elif taken["validation"] < VALIDATION_FRACTION * total:
            out[g], taken["validation"] = "validation", taken["validation"] + groups[g]
        else:
            out[g] = "training"
    return out


def plan(
    recordings: list[Recording], seed: int, max_per_recording: int = 10, max_per_class: int = 200
) -> list[Clip]:
    """Every clip to write, a pure function of the recordings and the seed.

    Parameters
    ----------
    recordings : list of Recording
        All sources' files (exact duplicates already removed).
    seed : int
    max_per_recording, max_per_class : int
        Caps on clips cut from one recording and on clips of one class.

    Returns
    -------
    list of Clip
        Sorted by track id (ids from :data:`FIRST_TRACK_ID`, in source, path, offset order).
    """
    clips: list[Clip] = []
    next_id = FIRST_TRACK_ID
    for s in range(len(SOURCES)):
        recs = sorted((r for r in recordings if r.source == s), key=lambda r: r.path)
        if not recs:
            continue
        stems = {Path(r.path).stem.lower() for r in recs}
        stems |= {_VARIANT_SUFFIX.sub("", x).rstrip("-_ ") for x in stems}
        k = _clips_per_recording(recs, max_per_recording, max_per_class)
        windows = {r.path: window_offsets(r.seconds, k) for r in recs}
        group_of = {r.path: group_key(Path(r.path).stem, stems) for r in recs}
        sizes: dict[str, int] = {}
        for r in recs:
            sizes[group_of[r.path]] = sizes.get(group_of[r.path], 0) + len(windows[r.path])
        rng = np.random.default_rng([seed, s])
        split_of = _assign_splits({g: n for g, n in sizes.items() if n > 0}, rng)
        rates, probs = zip(*BITRATES, strict=True)
        for r in recs:
            for off in windows[r.path]:
                clips.append(
                    Clip(
                        next_id,
                        s,
                        r.path,
                        off,
                        r.seconds,
                        group_of[r.path],
                        split_of[group_of[r.path]],
                        int(rng.choice(rates, p=probs)),
                    )
                )
                next_id += 1
    return clips


# --------------------------------------------------------------------------- I/O


def fetch(work: Path) -> dict[str, str]:
    """Download (``apt-get download``) and unpack every source package; return package -> .deb name."""
    debs, extract = work / "debs", work / "extract"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [s.package for s in SOURCES if not list(debs.glob(f"{s.package}_*.deb"))]
    if missing:
        print(f"apt-get download {' '.join(missing)}", flush=True)
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    versions = {}
    for s in SOURCES:
        deb = sorted(debs.glob(f"{s.package}_*.deb"))[-1]
        versions[s.package] = deb.name
        dest = extract / s.package
        if not (dest / ".unpacked").is_file():
            dest.mkdir(parents=True, exist_ok=True)
            subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
            for pk3 in dest.rglob("*.pk3"):  # id Tech game archives are zip files
                with zipfile.ZipFile(pk3) as z:
                    z.extractall(pk3.with_name(pk3.name + ".d"))
            (dest / ".unpacked").write_text(deb.name + "\n")
    return versions


def scan(extract: Path) -> list[Recording]:
    """Every music file of every source that holds at least one clip; exact duplicates dropped."""
    import soundfile as sf

    out, seen = [], set()
    for i, s in enumerate(SOURCES):
        root = extract / s.package
        files = sorted({p for g in s.globs for p in root.glob(g) if p.suffix.lower() in AUDIO_SUFFIXES})
        for p in files:
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            info = sf.info(str(p))
            if info.duration >= CLIP_SECONDS:
                out.append(
                    Recording(
                        i, str(p.relative_to(extract)), float(info.duration), int(info.samplerate), digest
                    )
                )
    return out


def write_clip(extract: str, fma: str, clip: Clip) -> dict | None:
    """Decode one clip, encode it as MP3 with an ID3 tag; None if it is silence.

    A clip whose MP3 is already there (from an interrupted build with the same plan: files are
    written under a temporary name and renamed) is kept, so a rerun resumes.
    """
    import soundfile as sf

    from preprocess.synth.audio import encode_mp3, id3_tag

    path = Path(extract) / clip.path
    dest = Path(fma) / "fma_large" / audio_relpath(clip.track_id)
    if dest.is_file() and dest.stat().st_size > 0:
        info = sf.info(str(path))
        return {
            "sample_rate": int(info.samplerate),
            "channels": min(int(info.channels), 2),
            "seconds": CLIP_SECONDS,
        }
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        f.seek(int(clip.offset_s * sr))
        x = f.read(int(CLIP_SECONDS * sr), dtype="float32", always_2d=True)
    if x.shape[1] > 2:
        x = x[:, :2]
    if float(np.sqrt(np.mean(x**2))) < MIN_RMS:
        return None
    peak = float(np.max(np.abs(x)))
    if peak > 1.0:
        x = x / peak
    mp3 = encode_mp3(x, sr, clip.bitrate_kbps, vbr=False)
    genre = CLASS_NAMES[clip.source]
    tag = id3_tag(path.stem, SOURCES[clip.source].package, clip.group, genre, 1, 2024, None)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(tag + mp3)
    tmp.replace(dest)
    return {"sample_rate": sr, "channels": int(x.shape[1]), "seconds": round(x.shape[0] / sr, 3)}


def write_metadata(fma: Path, clips: list[Clip], written: list[dict | None], seed: int) -> dict:
    """Write ``fma/fma_metadata/tracks.csv`` and ``genres.csv`` for the clips written (None: dropped).

    Returns
    -------
    dict
        track id (str) -> the clip's fields, what :func:`write_clip` returned and its genre_top.
    """
    from shards import atomic_path

    rows, entries = {}, {}
    groups = sorted({c.group for c in clips})
    for c, w in zip(clips, written, strict=True):
        if w is None:
            continue
        genre = CLASS_NAMES[c.source]
        rows[c.track_id] = track_row(
            np.random.default_rng([seed, c.track_id]),
            track_id=c.track_id,
            artist_id=1 + c.source,
            album_id=1 + groups.index(c.group),
            title=Path(c.path).stem,
            artist=SOURCES[c.source].package,
            album=c.group,
            split=c.split,
            subset="large",
            genre_top=genre,
            genres=[TOP_ID[genre]],
            genres_all=[TOP_ID[genre]],
            bit_rate=c.bitrate_kbps * 1000,
            duration=int(c.recording_seconds),
            number=1,
        )
        entries[str(c.track_id)] = {**asdict(c), **w, "genre_top": genre}
    meta = fma / "fma_metadata"
    meta.mkdir(parents=True, exist_ok=True)
    with atomic_path(meta / "tracks.csv") as tmp:
        tracks_frame(rows).to_csv(tmp)
    with atomic_path(meta / "genres.csv") as tmp:
        genres_frame([[TOP_ID[e["genre_top"]]] for e in entries.values()]).to_csv(tmp)
    return entries


def build(work: Path, seed: int, jobs: int, max_per_recording: int, max_per_class: int) -> dict:
    """Download, unpack, plan and write ``work/fma``; return the summary written to realmusic.json."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    from shards import atomic_write_text

    versions = fetch(work)
    extract, fma = work / "extract", work / "fma"
    recordings = scan(extract)
    clips = plan(recordings, seed, max_per_recording, max_per_class)
    results = Parallel(n_jobs=jobs, return_as="generator", batch_size=4)(
        delayed(write_clip)(str(extract), str(fma), c) for c in clips
    )
    written = list(tqdm(results, total=len(clips), desc="clips", unit="clip"))
    entries = write_metadata(fma, clips, written, seed)
    summary = {
        "seed": seed,
        "packages": versions,
        "sources": [asdict(s) for s in SOURCES],
        "silent_clips_dropped": sum(w is None for w in written),
        "clips": entries,
    }
    atomic_write_text(fma / "realmusic.json", json.dumps(summary, indent=1) + "\n")
    return summary


def describe(summary: dict) -> str:
    """A table: class, package, clips per split, groups per split."""
    lines = [
        "| class | package | train | validation | test | groups (tr/va/te) |",
        "|---|---|---|---|---|---|",
    ]
    clips = list(summary["clips"].values())
    for i, s in enumerate(SOURCES):
        mine = [c for c in clips if c["source"] == i]
        n = {sp: sum(c["split"] == sp for c in mine) for sp in ("training", "validation", "test")}
        g = {sp: len({c["group"] for c in mine if c["split"] == sp}) for sp in n}
        lines.append(
            f"| {CLASS_NAMES[i]} | {s.package} | {n['training']} | {n['validation']} | {n['test']} "
            f"| {g['training']}/{g['validation']}/{g['test']} |"
        )
    tot = {sp: sum(c["split"] == sp for c in clips) for sp in ("training", "validation", "test")}
    lines.append(f"| all | | {tot['training']} | {tot['validation']} | {tot['test']} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--work",
        type=Path,
        required=True,
        help="folder for debs/, extract/ and the FMA-shaped fma/ (outside the repo)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--clips-per-recording", type=int, default=10)
    parser.add_argument("--clips-per-class", type=int, default=200)
    args = parser.parse_args(argv)
    summary = build(args.work, args.seed, args.jobs, args.clips_per_recording, args.clips_per_class)
    print(describe(summary))
    print(
        f"wrote {args.work / 'fma'} ({len(summary['clips'])} clips, "
        f"{summary['silent_clips_dropped']} silent ones dropped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
