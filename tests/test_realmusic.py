"""bench/realmusic.py: grouping of variants, split by group, clip windows, and one real clip written."""

import numpy as np
import soundfile as sf

from bench.realmusic import (
    CLIP_SECONDS,
    SOURCES,
    Clip,
    Recording,
    group_key,
    plan,
    window_offsets,
    write_clip,
    write_metadata,
)


def test_group_key_joins_variants_only():
    stems = {
        "farm",
        "farm_f",
        "forest",
        "forest2",
        "ingame_01",
        "ingame_02",
        "track3",
        "track3_enhanced",
        "sixtyfour_",
        "sixtyfour_revisited",
        "psymongn1",
        "psymongn2",
    }
    assert group_key("farm_f", stems) == "farm"
    assert group_key("forest2", stems) == "forest"
    assert group_key("track3_enhanced", stems) == "track3"
    assert group_key("sixtyfour_revisited", stems) == group_key("sixtyfour_", stems) == "sixtyfour"
    assert group_key("ingame_01", stems) != group_key("ingame_02", stems)
    assert group_key("PsymongN1", stems) != group_key("PsymongN2", stems)  # no "psymongn" piece


def test_window_offsets_are_whole_non_overlapping_clips():
    assert window_offsets(29.9, 5) == []
    offs = window_offsets(200.0, 3)
    assert len(offs) == 3 and offs[0] >= 0 and offs[-1] + CLIP_SECONDS <= 200.0
    assert all(b - a >= CLIP_SECONDS for a, b in zip(offs, offs[1:], strict=False))
    assert len(window_offsets(200.0, 100)) == 6


def _recordings():
    rng = np.random.default_rng(0)
    recs = []
    for s in range(len(SOURCES)):
        for k in range(8):
            seconds = float(rng.uniform(40, 400))
            recs.append(Recording(s, f"src{s}/piece{k:02d}.ogg", seconds, 44100, f"{s}-{k}"))
        recs.append(Recording(s, f"src{s}/piece00_fast.ogg", 90.0, 44100, f"{s}-fast"))
    return recs


def test_plan_splits_by_group_with_every_class_in_every_split():
    clips = plan(_recordings(), seed=0, max_per_recording=4, max_per_class=30)
    split_of_group = {}
    for c in clips:
        assert split_of_group.setdefault((c.source, c.group), c.split) == c.split  # one split per group
    assert split_of_group[(0, "piece00")] == [c.split for c in clips if c.path == "src0/piece00_fast.ogg"][0]
    for s in range(len(SOURCES)):
        mine = [c for c in clips if c.source == s]
        assert {c.split for c in mine} == {"training", "validation", "test"}
        assert len(mine) <= 30
    assert len({c.track_id for c in clips}) == len(clips)
    assert plan(_recordings(), seed=0, max_per_recording=4, max_per_class=30) == clips
    assert plan(_recordings(), seed=1, max_per_recording=4, max_per_class=30) != clips


def test_write_clip_makes_a_30_s_mp3_and_drops_silence(tmp_path):
    sr = 22050
    t = np.arange(int(70 * sr)) / sr
    music = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None] * np.ones((1, 2))
    music[int(40 * sr) :] = 0.0  # silence from 40 s on
    (tmp_path / "x").mkdir()
    sf.write(tmp_path / "x" / "song.ogg", music, sr, format="OGG", subtype="VORBIS")
    clip = Clip(200001, 2, "x/song.ogg", 5.0, 70.0, "song", "training", 192)
    info = write_clip(str(tmp_path), str(tmp_path / "fma"), clip)
    assert info == {"sample_rate": sr, "channels": 2, "seconds": CLIP_SECONDS}
    mp3 = tmp_path / "fma" / "fma_large" / "200" / "200001.mp3"
    decoded, rate = sf.read(mp3)
    assert rate == sr and abs(len(decoded) / sr - CLIP_SECONDS) < 0.2 and np.abs(decoded).max() > 0.1
    silent = Clip(200002, 2, "x/song.ogg", 40.0, 70.0, "song", "training", 192)
    assert write_clip(str(tmp_path), str(tmp_path / "fma"), silent) is None
    assert not (tmp_path / "fma" / "fma_large" / "200" / "200002.mp3").exists()


def test_metadata_loads_as_fma_with_the_planned_splits_and_labels(tmp_path):
    from preprocess.fma import CLASS_NAMES
    from preprocess.metadata import load_selection

    clips = plan(_recordings(), seed=0, max_per_recording=2, max_per_class=10)
    written = [
        None if i == 3 else {"sample_rate": 44100, "channels": 2, "seconds": 30.0} for i in range(len(clips))
    ]
    entries = write_metadata(tmp_path, clips, written, seed=0)
    assert len(entries) == len(clips) - 1 and str(clips[3].track_id) not in entries
    selection = load_selection(tmp_path, "large")
    got = {tid: (split, label) for split, rows in selection.tracks.items() for tid, label in rows}
    names = {"training": "train", "validation": "validation", "test": "test"}
    want = {c.track_id: (names[c.split], c.source) for i, c in enumerate(clips) if i != 3}
    assert got == want and not selection.skipped
    assert CLASS_NAMES[clips[0].source] == entries[str(clips[0].track_id)]["genre_top"]
