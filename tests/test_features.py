"""The features stage end to end on the generated mini-FMA (real MP3s, real HDF5, real processes)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import h5py
import librosa
import numpy as np
import pytest

from preprocess import driver
from preprocess.__main__ import main
from preprocess.audio import decode, mel_from_file
from preprocess.fma import CLASS_NAMES, KNOWN_BAD
from preprocess.metadata import load_tracks, tracks_csv_path
from preprocess.options import FeatureOptions
from shards import read_manifest, read_shard
from tests._reference import plain_librosa

SHARD_SIZE = 16
SPLIT = {"training": "train", "validation": "validation", "test": "test"}
REASON = {"zero_byte": "empty file", "missing": "missing file", "random_bytes": "cannot decode: ",
          "short": "too short: ", "truncated": "too short: ", "silence": "digital silence"}


@pytest.fixture(scope="module")
def expected(mini_fma):
    """track id -> (split, label, kind) of every track the stage should try, from the truth + tracks.csv."""
    fma_dir, truth = mini_fma
    duration = load_tracks(tracks_csv_path(fma_dir))[("track", "duration")]
    return {int(k): (SPLIT[t["split"]], CLASS_NAMES.index(t["genre_top"]), t["kind"])
            for k, t in truth["tracks"].items()
            if t["genre_top"] is not None and int(k) not in KNOWN_BAD and duration[int(k)] > 29}


@pytest.fixture(scope="module")
def run(mini_fma, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    summary = driver.run_features(
        FeatureOptions(mini_fma[0], out, jobs=2, shard_size=SHARD_SIZE, progress=False))
    return out, summary


def test_shards_hold_exactly_the_expected_tracks(run, expected):
    out, summary = run
    manifest = read_manifest(out)
    written, failed = {}, {}
    for entry in manifest["shards"]:
        shard = read_shard(out / entry["name"], verify=True)
        assert shard.num_tracks <= SHARD_SIZE and shard.mel_shape[1:] == (128, 128)
        for tid, label in zip(shard.track_id.tolist(), shard.label.tolist(), strict=True):
            assert tid not in written
            written[tid] = (shard.split, label)
        failed.update(dict(shard.failed))
        assert all(expected[t][0] == shard.split for t, _ in shard.failed)
    good = {t: v[:2] for t, v in expected.items() if v[2] == "good"}
    assert written == good
    bad = {t: v[2] for t, v in expected.items() if v[2] != "good"}
    assert set(failed) == set(bad) and len(bad) >= 4
    for tid, kind in bad.items():
        assert failed[tid].startswith(REASON[kind]), (tid, kind, failed[tid])
    assert {f["track_id"]: f["reason"] for f in manifest["failed"]} == failed
    assert sum(t["tracks"] for t in manifest["totals"].values()) == len(good)
    assert manifest["skipped"]["no genre_top"] and manifest["class_names"] == list(CLASS_NAMES)
    assert summary["written"] == len(good) and summary["failed"]


def test_images_match_plain_librosa_on_every_valid_file(run, mini_fma):
    out, _ = run
    fma_dir, truth = mini_fma
    checked = truncated_by_libsndfile = 0
    for path in sorted(out.glob("*.h5")):
        with h5py.File(path, "r") as f:
            images, ids = f["mel"][()], f["track_id"][()]
        for image, tid in zip(images, ids.tolist(), strict=True):
            info = truth["tracks"][str(tid)]
            if info["kind"] != "good":
                continue
            file = fma_dir / info["path"]
            y, sr = librosa.load(file, sr=None, mono=True, duration=29.5)
            assert sr == info["sample_rate"]
            if y.size >= int(29.5 * sr):
                assert np.abs(image - plain_librosa(y, sr)).max() < 0.5, tid
            else:
                # libsndfile stops early on VBR files without a Xing header (it trusts a length
                # estimated from the first frame's bit rate). Check our decode agrees with it as far
                # as it goes, and the recipe on our (complete) decode.
                assert info["vbr"], tid
                truncated_by_libsndfile += 1
                ours, rate = decode(file)
                mono = ours.mean(axis=0)[: int(29.5 * sr)]
                assert mono.size == int(29.5 * sr)
                assert np.abs(mono[: y.size] - y).max() < 1e-3
                assert np.abs(image - plain_librosa(mono, rate)).max() < 0.5, tid
            checked += 1
    assert checked == sum(1 for t in truth["tracks"].values() if t["kind"] == "good"
                          and t["genre_top"] and int(_key(t)) not in KNOWN_BAD) - _skipped_good(out, truth)
    print(f"{checked} files checked, {truncated_by_libsndfile} VBR files checked against our decode")


def _key(info: dict) -> str:
    return info["path"].rsplit("/", 1)[1].split(".")[0]


def _skipped_good(out, truth) -> int:
    plan = json.loads((out / "plan.json").read_text())
    skipped = {t for ids in plan["skipped"].values() for t in ids}
    return sum(1 for k, t in truth["tracks"].items() if t["kind"] == "good" and t["genre_top"]
               and int(k) not in KNOWN_BAD and int(k) in skipped)


def test_mel_from_file_gives_the_stored_image(run, mini_fma):
    out, _ = run
    manifest = read_manifest(out)
    path = out / manifest["shards"][0]["name"]
    with h5py.File(path, "r") as f:
        images, ids = f["mel"][:3], f["track_id"][:3]
    for image, tid in zip(images, ids.tolist(), strict=True):
        file = mini_fma[0] / mini_fma[1]["tracks"][str(tid)]["path"]
        assert np.array_equal(mel_from_file(file, manifest["recipe"]), image)


def _stats(folder):
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.iterdir())}


def test_rerun_does_nothing(run, mini_fma):
    out, _ = run
    before = _stats(out)
    summary = driver.run_features(
        FeatureOptions(mini_fma[0], out, jobs=2, shard_size=SHARD_SIZE, progress=False))
    assert summary["computed"] == []  # no shard task ran: nothing decoded
    assert len(summary["already_complete"]) == summary["planned"]
    assert _stats(out) == before  # nothing rewritten, manifest and plan included


def test_other_recipe_is_refused_and_wrong_dataset_is_explained(run, mini_fma, tmp_path, capsys):
    out, _ = run
    from preprocess.recipe import RECIPES

    with pytest.raises(driver.FeaturesError, match="different settings.*sample_rate.*--force"):
        driver.run_features(FeatureOptions(mini_fma[0], out, shard_size=SHARD_SIZE,
                                           recipe=RECIPES["fixed22050"], progress=False))
    argv = ["features", "--fma-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--jobs", "1",
            "--shard-size", "8", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "fma_metadata" / "tracks.csv") in err
    assert "make download" in err and "make demo" in err
    # Metadata present but no audio where it looks: stop before decoding anything.
    wrong = tmp_path / "wrong"
    (wrong / "fma_metadata").mkdir(parents=True)
    (wrong / "fma_large").mkdir()
    (wrong / "fma_metadata" / "tracks.csv").write_bytes(tracks_csv_path(mini_fma[0]).read_bytes())
    with pytest.raises(driver.FeaturesError, match="sampled tracks have no file"):
        driver.run_features(FeatureOptions(wrong, tmp_path / "o2", shard_size=SHARD_SIZE, progress=False))


def test_killed_run_restarts_to_identical_shards(run, mini_fma, tmp_path, python, subprocess_env):
    out, _ = run
    killed = tmp_path / "killed"
    cmd = [python, "-m", "preprocess", "features", "--fma-dir", str(mini_fma[0]), "--out", str(killed),
           "--jobs", "1", "--shard-size", str(SHARD_SIZE), "--no-progress"]
    proc = subprocess.Popen(cmd, env=subprocess_env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(killed.glob("*.h5"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes
        proc.wait()
    done_at_kill = len(list(killed.glob("*.h5")))
    total = len(read_manifest(out)["shards"])
    assert 2 <= done_at_kill < total and not (killed / "manifest.json").exists()
    summary = driver.run_features(FeatureOptions(mini_fma[0], killed, jobs=2, shard_size=SHARD_SIZE,
                                                 progress=False))
    assert len(summary["already_complete"]) >= 2
    ours, reference = read_manifest(killed), read_manifest(out)
    assert [(e["name"], e["checksum"]) for e in ours["shards"]] == \
        [(e["name"], e["checksum"]) for e in reference["shards"]]
    assert ours["failed"] == reference["failed"]
    assert not list(killed.glob(".*tmp-*"))  # no temporary file left behind


def _group_gone(pgid: int, within_s: float) -> bool:
    """True once no process of the process group ``pgid`` is left (waiting up to ``within_s``)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_stops_the_workers_says_how_far_and_a_rerun_resumes(run, mini_fma, tmp_path, python,
                                                                   subprocess_env):
    """Ctrl-C in a terminal: SIGINT to the whole foreground group (the driver and its pool workers)."""
    out, _ = run
    total = len(read_manifest(out)["shards"])
    stopped = tmp_path / "stopped"
    cmd = [python, "-m", "preprocess", "features", "--fma-dir", str(mini_fma[0]), "--out", str(stopped),
           "--jobs", "2", "--shard-size", str(SHARD_SIZE)]
    proc = subprocess.Popen(cmd, env=subprocess_env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(stopped.glob("*.h5"))) < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    match = re.search(r"interrupted: (\d+) of (\d+) shards are complete.*rerun the same command to resume",
                      err)
    assert match and int(match.group(2)) == total, err
    assert 1 <= int(match.group(1)) < total
    assert _group_gone(proc.pid, within_s=10), "pool workers still running after Ctrl-C"
    assert not (stopped / "manifest.json").exists()

    rerun = subprocess.run([*cmd, "--no-progress"], env=subprocess_env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    resumed = re.search(rf"(\d+) of this task's {total} already complete", rerun.stderr)
    assert resumed and resumed.group(1) == match.group(1), rerun.stderr
    assert [(e["name"], e["checksum"]) for e in read_manifest(stopped)["shards"]] == \
        [(e["name"], e["checksum"]) for e in read_manifest(out)["shards"]]
    assert not list(stopped.glob(".*tmp-*"))


def test_finalize_names_missing_shards(run, tmp_path, capsys):
    out, _ = run
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in out.iterdir():
        if p.name != "manifest.json":
            (partial / p.name).write_bytes(p.read_bytes())
    victim = sorted(partial.glob("validation-*.h5"))[0]
    victim.unlink()
    assert main(["finalize", str(partial)]) == 1
    assert f"{victim.name}: missing" in capsys.readouterr().err
    assert not (partial / "manifest.json").exists()
    (partial / victim.name).write_bytes((out / victim.name).read_bytes())
    assert main(["finalize", str(partial)]) == 0
    assert read_manifest(partial) == read_manifest(out)
