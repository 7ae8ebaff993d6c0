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
from preprocess.audio import mel_from_file
from preprocess.audio_source import AudioSource
from preprocess.fma import CLASS_NAMES, KNOWN_BAD
from preprocess.metadata import load_tracks, tracks_csv_path
from preprocess.options import FeatureOptions
from shards import read_manifest, read_shard
from tests._faults import group_gone, start
from tests._reference import plain_librosa

SHARD_SIZE = 16
SPLIT = {"training": "train", "validation": "validation", "test": "test"}
REASON = {
    "zero_byte": "empty file",
    "missing": "missing file",
    "random_bytes": "cannot decode: ",
    "short": "too short: ",
    "truncated": "too short: ",
    "silence": "digital silence",
}


@pytest.fixture(scope="module")
def expected(mini_fma):
    """track id -> (split, label, kind) of every track the stage should try, from the truth + tracks.csv."""
    fma_dir, truth = mini_fma
    duration = load_tracks(tracks_csv_path(fma_dir))[("track", "duration")]
    return {
        int(k): (SPLIT[t["split"]], CLASS_NAMES.index(t["genre_top"]), t["kind"])
        for k, t in truth["tracks"].items()
        if t["genre_top"] is not None and int(k) not in KNOWN_BAD and duration[int(k)] > 29
    }


@pytest.fixture(scope="module")
def run(mini_fma, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    summary = driver.run_features(
        FeatureOptions(mini_fma[0], out, jobs=2, shard_size=SHARD_SIZE, progress=False)
    )
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
    out, summary = run
    fma_dir, truth = mini_fma
    manifest = read_manifest(out)
    padded = {p["track_id"]: p["seconds"] for p in manifest["padded"]}
    checked, short = 0, {}
    for path in sorted(out.glob("*.h5")):
        with h5py.File(path, "r") as f:
            images, ids = f["mel"][()], f["track_id"][()]
        for image, tid in zip(images, ids.tolist(), strict=True):
            info = truth["tracks"][str(tid)]
            if info["kind"] != "good":
                continue
            y, sr = librosa.load(fma_dir / info["path"], sr=None, mono=True, duration=29.5)
            assert sr == info["sample_rate"]
            n = int(29.5 * sr)
            if y.size < n:  # the short-clip policy pads with silence, and the manifest counts it
                short[tid] = y.size / sr
                y = np.concatenate([y, np.zeros(n - y.size, np.float32)])
            assert np.abs(image - plain_librosa(y, sr)).max() < 0.05, tid
            checked += 1
    assert checked == sum(
        1
        for t in truth["tracks"].values()
        if t["kind"] == "good" and t["genre_top"] and int(_key(t)) not in KNOWN_BAD
    ) - _skipped_good(out, truth)
    # A VBR file without a Xing header: libsndfile (so librosa.load too) stops at a length it
    # estimates from the first frame's bit rate; the clip is padded and counted.
    assert short and padded.keys() == short.keys()
    assert all(abs(padded[t] - short[t]) < 1e-3 for t in short)
    assert all(truth["tracks"][str(t)]["vbr"] and not truth["tracks"][str(t)]["xing"] for t in short)
    assert np.allclose(summary["padded"], sorted(padded.values()), atol=1e-3)
    assert sum(e["num_padded"] for e in manifest["shards"]) == len(padded)


def _key(info: dict) -> str:
    return info["path"].rsplit("/", 1)[1].split(".")[0]


def _skipped_good(out, truth) -> int:
    plan = json.loads((out / "plan.json").read_text())
    skipped = {t for ids in plan["skipped"].values() for t in ids}
    return sum(
        1
        for k, t in truth["tracks"].items()
        if t["kind"] == "good" and t["genre_top"] and int(k) not in KNOWN_BAD and int(k) in skipped
    )


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
        FeatureOptions(mini_fma[0], out, jobs=2, shard_size=SHARD_SIZE, progress=False)
    )
    assert summary["computed"] == []  # no shard task ran: nothing decoded
    assert len(summary["already_complete"]) == summary["planned"]
    assert _stats(out) == before  # nothing rewritten, manifest and plan included


def test_other_recipe_is_refused_and_wrong_dataset_is_explained(run, mini_fma, tmp_path, capsys):
    out, _ = run
    from preprocess.recipe import RECIPES

    with pytest.raises(driver.FeaturesError, match="different settings.*sample_rate.*--force"):
        driver.run_features(
            FeatureOptions(
                mini_fma[0], out, shard_size=SHARD_SIZE, recipe=RECIPES["fixed22050"], progress=False
            )
        )
    argv = [
        "features",
        "--fma-dir",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "o"),
        "--jobs",
        "1",
        "--shard-size",
        "8",
        "--no-progress",
    ]
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


def test_the_fine_image_comes_from_the_same_decode_beside_an_unchanged_mel(run, mini_fma, tmp_path):
    """--recipes reference,fine: every shard holds the same tracks, failures and `mel` as without it,
    plus `mel_fine` (float16, 128 x 1271) recorded with its recipe in the shards, plan and manifest;
    switching an existing shard set to or from the fine image is refused without --force."""
    from preprocess.recipe import RECIPES

    plain, _ = run
    out = tmp_path / "fine"
    options = FeatureOptions(
        mini_fma[0], out, jobs=2, shard_size=SHARD_SIZE, fine=RECIPES["fine"], progress=False
    )
    driver.run_features(options)
    manifest = read_manifest(out)
    assert manifest["format_version"] == 2
    assert manifest["extras"] == {"mel_fine": {"recipe": RECIPES["fine"].to_dict()}}
    assert json.loads((out / "plan.json").read_text())["fine_recipe"] == RECIPES["fine"].to_dict()
    assert "fine_recipe" not in json.loads((plain / "plan.json").read_text())
    for entry in manifest["shards"]:
        ours, theirs = read_shard(out / entry["name"], verify=True), read_shard(plain / entry["name"])
        assert ours.failed == theirs.failed
        np.testing.assert_array_equal(ours.track_id, theirs.track_id)
        assert ours.extra_shapes["mel_fine"] == (ours.num_tracks, 128, 1271)
        with h5py.File(out / entry["name"]) as f, h5py.File(plain / entry["name"]) as g:
            coarse = g["mel"][()]
            np.testing.assert_array_equal(f["mel"][()], coarse)
            assert f["mel_fine"].dtype == np.float16
            fine = f["mel_fine"][()].astype(np.float32)
        if ours.num_tracks:  # the same excerpt: the time-averaged spectra agree, band by band
            assert np.corrcoef(fine.mean(axis=2).ravel(), coarse.mean(axis=2).ravel())[0, 1] > 0.95
    assert driver.run_features(options)["computed"] == []  # complete: rerun does nothing
    for other, into in ((options.replace(fine=None), out), (options.replace(out=plain), plain)):
        with pytest.raises(driver.FeaturesError, match="different settings.*fine_recipe.*--force"):
            driver.run_features(other.replace(out=into))


def test_killed_run_restarts_to_identical_shards(run, mini_fma, tmp_path, python, subprocess_env):
    out, _ = run
    killed = tmp_path / "killed"
    cmd = [
        python,
        "-m",
        "preprocess",
        "features",
        "--fma-dir",
        str(mini_fma[0]),
        "--out",
        str(killed),
        "--jobs",
        "1",
        "--shard-size",
        str(SHARD_SIZE),
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=subprocess_env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    summary = driver.run_features(
        FeatureOptions(mini_fma[0], killed, jobs=2, shard_size=SHARD_SIZE, progress=False)
    )
    assert len(summary["already_complete"]) >= 2
    ours, reference = read_manifest(killed), read_manifest(out)
    assert [(e["name"], e["checksum"]) for e in ours["shards"]] == [
        (e["name"], e["checksum"]) for e in reference["shards"]
    ]
    assert ours["failed"] == reference["failed"]
    assert not list(killed.glob(".*tmp-*"))  # no temporary file left behind


def test_ctrl_c_stops_the_workers_says_how_far_and_a_rerun_resumes(
    run, mini_fma, tmp_path, python, subprocess_env
):
    """Ctrl-C in a terminal: SIGINT to the whole foreground group (the driver and its pool workers)."""
    out, _ = run
    total = len(read_manifest(out)["shards"])
    stopped = tmp_path / "stopped"
    cmd = [
        python,
        "-m",
        "preprocess",
        "features",
        "--fma-dir",
        str(mini_fma[0]),
        "--out",
        str(stopped),
        "--jobs",
        "2",
        "--shard-size",
        str(SHARD_SIZE),
    ]
    proc = start(cmd, subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
    match = re.search(
        r"interrupted: (\d+) of (\d+) shards are complete.*rerun the same command to resume", err
    )
    assert match and int(match.group(2)) == total, err
    assert 1 <= int(match.group(1)) < total
    assert group_gone(proc.pid, within_s=10), "pool workers still running after Ctrl-C"
    assert not (stopped / "manifest.json").exists()

    rerun = subprocess.run(
        [*cmd, "--no-progress"], env=subprocess_env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr
    resumed = re.search(rf"(\d+) of this task's {total} already complete", rerun.stderr)
    assert resumed and resumed.group(1) == match.group(1), rerun.stderr
    assert [(e["name"], e["checksum"]) for e in read_manifest(stopped)["shards"]] == [
        (e["name"], e["checksum"]) for e in read_manifest(out)["shards"]
    ]
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


# --------------------------------------------------------------------------- long files, silence


@pytest.fixture(scope="module")
def long_mp3(tmp_path_factory):
    """A 60-minute 44.1 kHz stereo MP3 (128 kbit/s): a 10 s encoding repeated (valid frames throughout)."""
    import lameenc

    sr = 44100
    t = np.arange(10 * sr) / sr
    tone = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) * 16000).astype("<i2")
    enc = lameenc.Encoder()
    enc.set_in_sample_rate(sr)
    enc.set_channels(2)
    enc.set_bit_rate(128)
    enc.set_quality(7)
    stream = bytes(enc.encode(np.stack([tone, tone[::-1]], 1).tobytes()) + enc.flush())
    path = tmp_path_factory.mktemp("long") / "long.mp3"
    path.write_bytes(stream * 360)
    return path


_SHARD_PROBE = """
import json, resource, sys, time
from preprocess.driver import compute_shard
task = json.loads(sys.argv[1])
start = time.perf_counter()
result = compute_shard(task)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "wall_s": time.perf_counter() - start, "written": result["written"],
                  "failed": result["failed"]}))
"""


def test_a_60_minute_file_costs_what_a_clip_costs(mini_fma, long_mp3, tmp_path, python, subprocess_env):
    """Only the first 29.5 s is decoded: one 60-minute file in a shard of 30 s clips adds little memory
    and time (the whole file decoded would be ~1.2 GB of float32 samples)."""
    from preprocess.fma import audio_relpath

    fma_dir, truth = mini_fma
    clips = [
        int(k)
        for k, t in sorted(truth["tracks"].items())
        if t["kind"] == "good"
        and t["sample_rate"] == 44100
        and t["channels"] == 2
        and t["duration_s"] == 30.0
    ][:3]
    audio = tmp_path / "audio"
    for tid in clips:
        (audio / audio_relpath(tid)).parent.mkdir(parents=True, exist_ok=True)
        (audio / audio_relpath(tid)).write_bytes((fma_dir / truth["tracks"][str(tid)]["path"]).read_bytes())
    long_id = 999_999
    (audio / audio_relpath(long_id)).parent.mkdir(parents=True, exist_ok=True)
    (audio / audio_relpath(long_id)).symlink_to(long_mp3)

    def probe(ids: list[int], folder: str) -> dict:
        (tmp_path / folder).mkdir()
        task = one_shard_task(ids, audio, timeout_s=120.0, out=str(tmp_path / folder))
        proc = subprocess.run(
            [python, "-c", _SHARD_PROBE, json.dumps(task)],
            env=subprocess_env,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(proc.stdout.strip().splitlines()[-1])

    clips_only = probe(clips, "clips")
    with_long = probe(clips + [long_id], "long")
    assert clips_only["written"] == 3 and with_long["written"] == 4, with_long["failed"]
    extra_rss = with_long["rss_mib"] - clips_only["rss_mib"]
    extra_cpu = with_long["cpu_s"] - clips_only["cpu_s"]
    extra_wall = with_long["wall_s"] - clips_only["wall_s"]
    print(
        f"\n60-minute file: +{extra_rss:.0f} MiB peak RSS ({clips_only['rss_mib']:.0f} -> "
        f"{with_long['rss_mib']:.0f}), +{extra_cpu:.2f} s CPU, +{extra_wall:.2f} s wall in the shard task"
    )
    assert extra_rss < 100 and extra_cpu < 1.0


def one_shard_task(ids: list[int], audio_dir, timeout_s: float, **more) -> dict:
    """``driver.compute_shard``'s argument: one training shard of ``ids`` (label 0) from ``audio_dir``."""
    from preprocess.assign import ShardSpec
    from preprocess.recipe import RECIPES

    spec = ShardSpec(
        name="train-00000-of-00001.h5",
        split="train",
        shard_index=0,
        num_shards=1,
        track_ids=tuple(sorted(ids)),
        labels=(0,) * len(ids),
    )
    return {
        "spec": spec.to_dict(),
        "audio": AudioSource(str(audio_dir)).to_dict(),
        "recipe": RECIPES["reference"].to_dict(),
        "subset": "large",
        "class_names": list(CLASS_NAMES),
        "timeout_s": timeout_s,
        "compression": None,
        **more,
    }


def test_silence_fails_unless_kept(mini_fma, tmp_path):
    fma_dir, truth = mini_fma
    silent = [int(k) for k, t in truth["tracks"].items() if t["kind"] == "silence"]
    assert silent
    task = one_shard_task(silent, fma_dir / "fma_large", timeout_s=60.0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dropped = driver.compute_shard({**task, "out": str(tmp_path / "a")})
    assert dropped["written"] == 0 and {r for _, r in dropped["failed"]} == {"digital silence"}
    kept = driver.compute_shard({**task, "out": str(tmp_path / "b"), "keep_silence": True})
    assert kept["written"] == len(silent) and not kept["failed"]
    with h5py.File(tmp_path / "b" / task["spec"]["name"], "r") as f:
        assert (f["mel"][()] <= -90).all()  # at the dB floor (10 log10(amin) = -100 for zeros)
