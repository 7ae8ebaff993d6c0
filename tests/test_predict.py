"""Whole-track prediction on generated MP3s: windows, images, scores, folders, failures, memory, ONNX."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest

from preprocess.audio import decode, image_of, track_image
from preprocess.recipe import RECIPES, Recipe
from preprocess.supervise import FAULTS_ENV
from preprocess.synth.audio import encode_mp3
from preprocess.windows import window_images, window_plan, window_starts
from tests._inference import SR, direct_scores, make_checkpoint, tones, write_mp3
from train.__main__ import main

RECIPE = Recipe()
FINE = RECIPES["fine"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    found = {
        seconds: write_mp3(folder / f"clip{seconds}.mp3", seconds, seed=i)
        for i, seconds in enumerate((3, 20, 30, 75))
    }
    for rate in (48000, 16000):  # another frame grid; a rate the recipe resamples (no grid)
        found[f"75 s at {rate}"] = write_mp3(folder / f"clip75-{rate}.mp3", 75, seed=5, sr=rate)
    return found


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    checkpoint = make_checkpoint(folder / "best.pt", "seed", num_classes=5)
    return folder, checkpoint


@pytest.mark.parametrize(
    "seconds, recipe, hop_s, windows",
    [
        (20, RECIPE, 10.0, 1),
        (30, RECIPE, 10.0, 2),
        (75, RECIPE, 10.0, 6),
        (75, RECIPE, None, 5),
        (75, FINE, None, 5),
        ("75 s at 48000", FINE, None, 5),
        ("75 s at 16000", RECIPE, None, 5),
    ],
)
def test_each_window_image_is_the_features_stage_image_of_that_excerpt(
    clips, seconds, recipe, hop_s, windows
):
    result = window_images(clips[seconds], recipe, hop_s=hop_s)
    waveform, rate = decode(clips[seconds])  # the whole file, decoded at once
    plan = window_plan(recipe, rate, hop_s)
    # Windows on the frame grid share their frames; at 16 kHz the recipe resamples: no grid.
    assert plan.grid == (1 if rate == 16000 else recipe.hop_length(rate))
    starts = window_starts(waveform.shape[1], plan.window, plan.hop, plan.grid)
    assert len(starts) == windows
    np.testing.assert_allclose(result.starts_s, np.array(starts) / rate)
    assert result.images.shape == (len(starts), 128, recipe.n_frames) and result.silent == 0
    # Bit for bit. Except at 16 kHz: libsndfile/mpg123 give that MP3's samples a last-bit
    # difference (6e-8) depending on how many frames a read asks for (predict's reads always had), and
    # the resampling carries it into the image as a few 1e-5 dB.
    same = np.testing.assert_array_equal if rate != 16000 else partial(np.testing.assert_allclose, atol=1e-4)
    for start, image in zip(starts, result.images, strict=True):
        same(image, image_of(waveform[:, start : start + plan.window], rate, recipe).image)
    # The first window is the image the features stage stores for the track.
    same(result.images[0], track_image(clips[seconds], recipe).image)
    assert result.seconds == pytest.approx(waveform.shape[1] / rate)


def _predict_per_window(folder, clip, checkpoint: dict, out) -> tuple[dict, np.ndarray, np.ndarray]:
    """``predict --per-window`` of one clip into ``out`` (JSON Lines): the record, the windows'
    probabilities (W, K) and the track's (K,), in the checkpoint's class order."""
    argv = ["predict", "--run", str(folder), str(clip), "--per-window", "--output", str(out), "--jobs", "1"]
    assert main([*argv, "--top", "5"]) == 0
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    names = checkpoint["class_names"]
    per_window = np.array([[w["probabilities"][n] for n in names] for w in record["per_window"]])
    return record, per_window, np.array([record["probabilities"][n] for n in names])


def test_track_scores_are_the_mean_of_the_window_scores(clips, run, tmp_path):
    folder, checkpoint = run
    record, per_window, track = _predict_per_window(folder, clips[75], checkpoint, tmp_path / "r.jsonl")
    windows = window_images(clips[75], RECIPE)  # default hop: half a window
    assert record["windows"] == len(windows.starts_s) == 5
    expected, _ = direct_scores(checkpoint, windows.images)
    np.testing.assert_allclose(per_window, expected, atol=1e-6)
    np.testing.assert_allclose(track, expected.mean(axis=0), atol=1e-6)
    # The windows score differently, so the mean is not any single window's score.
    assert np.abs(expected - expected.mean(axis=0)).max() > 0.01
    assert [t["genre"] for t in record["top"]][0] == checkpoint["class_names"][int(track.argmax())]


def test_first_window_is_the_old_single_image_prediction(clips, run, tmp_path, capsys):
    folder, checkpoint = run
    assert main(["predict", "--run", str(folder), str(clips[75]), "--first-window", "--top", "1"]) == 0
    line = capsys.readouterr().out.strip()
    probabilities, _ = direct_scores(checkpoint, track_image(clips[75], RECIPE).image[None])
    best = int(probabilities[0].argmax())
    assert line == f"{clips[75]}: {checkpoint['class_names'][best]} {probabilities[0, best]:.3f} (1 window)"


CHUNKS = {"image": "mel_fine", "crop_frames": 128}


@pytest.fixture(scope="module")
def chunk_run(tmp_path_factory):
    """A run of a chunk model: shortchunk on the fine image, scored by 10 chunks of 128 frames."""
    folder = tmp_path_factory.mktemp("chunk-run")
    checkpoint = make_checkpoint(folder / "best.pt", "shortchunk", 5, recipe=FINE.to_dict(), config=CHUNKS)
    return folder, checkpoint


def test_a_chunk_model_scores_windows_of_its_recipe_each_by_its_chunks(clips, chunk_run, tmp_path, capsys):
    folder, checkpoint = chunk_run
    record, per_window, track = _predict_per_window(folder, clips[75], checkpoint, tmp_path / "r.jsonl")
    # A chunk model's default hop is a whole window: its chunks already cover every part of one.
    assert "windows of 29.5 s every 29.49 s (1270 frames)" in capsys.readouterr().err
    windows = window_images(clips[75], FINE, hop_s=FINE.duration_s)
    assert record["windows"] == len(windows.starts_s) == 3
    assert windows.images.shape == (3, 128, 1271)
    expected, _ = direct_scores(checkpoint, windows.images)  # each of the 10 chunks by hand, then the mean
    np.testing.assert_allclose(per_window, expected, atol=1e-5)
    np.testing.assert_allclose(track, expected.mean(axis=0), atol=1e-5)
    assert np.abs(expected - expected.mean(axis=0)).max() > 0.01  # the windows score differently


def test_the_header_says_how_the_windows_are_cut(clips, run, capsys):
    folder, _ = run
    common = ["predict", "--run", str(folder), str(clips[20]), "--jobs", "1"]
    assert main(common) == 0
    assert "windows of 29.5 s every 14.75 s (64 frames)" in capsys.readouterr().err
    assert main([*common, "--hop", "10"]) == 0  # rounded to whole frames of 10,164 samples
    assert "windows of 29.5 s every 9.91 s (43 frames)" in capsys.readouterr().err
    assert main([*common, "--first-window"]) == 0
    assert "first window only" in capsys.readouterr().err


def test_a_folder_with_broken_files_gives_one_row_each_and_exit_status_1(clips, run, tmp_path, capsys):
    folder, _ = run
    music = tmp_path / "music"
    (music / "sub" / "deeper").mkdir(parents=True)
    (music / "a.mp3").write_bytes(clips[20].read_bytes())
    (music / "sub" / "b.MP3").write_bytes(clips[30].read_bytes())
    (music / "sub" / "deeper" / "empty.mp3").write_bytes(b"")
    (music / "sub" / "garbage.mp3").write_bytes(np.random.default_rng(0).bytes(50_000))
    (music / "short.mp3").write_bytes(clips[3].read_bytes())
    (music / "notes.txt").write_text("not audio")
    out = tmp_path / "results.csv"
    code = main(["predict", "--run", str(folder), str(music), "--output", str(out), "--jobs", "2"])
    assert code == 1
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    assert sorted(rows) == sorted(
        str(music / p) for p in ("a.mp3", "short.mp3", "sub/b.MP3", "sub/garbage.mp3", "sub/deeper/empty.mp3")
    )
    assert rows[str(music / "a.mp3")]["windows"] == "1" and rows[str(music / "a.mp3")]["error"] == ""
    assert rows[str(music / "sub/b.MP3")]["windows"] == "2" and rows[str(music / "sub/b.MP3")]["genre_1"]
    assert rows[str(music / "sub/deeper/empty.mp3")]["error"] == "empty file"
    assert rows[str(music / "sub/garbage.mp3")]["error"].startswith("cannot decode")
    assert rows[str(music / "short.mp3")]["error"].startswith("too short: 3.0 s < 5 s")
    printed = capsys.readouterr()
    assert f"{out}: 5 files, 3 failed" in printed.out and "garbage.mp3" in printed.err


def test_jobs_do_not_change_the_results(clips, run, tmp_path):
    folder, _ = run
    outs = []
    for jobs in (1, 2):
        out = tmp_path / f"r{jobs}.jsonl"
        assert (
            main(
                [
                    "predict",
                    "--run",
                    str(folder),
                    str(clips[30]),
                    str(clips[75]),
                    str(clips[20]),
                    "--output",
                    str(out),
                    "--jobs",
                    str(jobs),
                ]
            )
            == 0
        )
        outs.append(out.read_text())
    assert outs[0] == outs[1]


def test_bad_arguments_are_one_line_errors(clips, run, tmp_path, capsys):
    folder, _ = run
    assert main(["predict", "--run", str(folder), str(tmp_path / "nope.mp3")]) == 2
    assert "nope.mp3: no such file or folder" in capsys.readouterr().err
    assert main(["predict", "--run", str(folder), str(clips[20]), "--hop", "0"]) == 2
    assert "--hop must be a positive" in capsys.readouterr().err
    assert main(["predict", "--run", str(folder), str(clips[20]), "--output", str(tmp_path / "r.xlsx")]) == 2
    assert "use a .csv or .jsonl" in capsys.readouterr().err
    assert main(["predict", str(clips[20])]) == 2
    assert "exactly one of --run" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_with_onnx_matches_the_checkpoint_and_runs_without_torch(
    clips, run, tmp_path, python, subprocess_env, repo_root
):
    folder, _ = run  # onnxruntime is in the dev extra: a missing one fails here, it is not skipped
    model = tmp_path / "m.onnx"
    assert main(["export", "--run", str(folder), "--onnx", str(model)]) == 0
    by_torch, by_onnx = tmp_path / "t.jsonl", tmp_path / "o.jsonl"
    assert main(["predict", "--run", str(folder), str(clips[75]), "--output", str(by_torch)]) == 0
    # A child process in which `import torch` fails, as in an environment without torch.
    code = f"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is not installed here")
sys.meta_path.insert(0, NoTorch())
from train.__main__ import main
code = main(["predict", "--onnx", {str(model)!r}, {str(clips[75])!r}, "--output", {str(by_onnx)!r}])
assert "torch" not in sys.modules
sys.exit(code)
"""
    done = subprocess.run(
        [python, "-c", code], cwd=repo_root, env=subprocess_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    t, o = (json.loads(p.read_text()) for p in (by_torch, by_onnx))
    assert o["windows"] == t["windows"] == 5
    for name, p in t["probabilities"].items():
        assert o["probabilities"][name] == pytest.approx(p, abs=1e-5)


@pytest.mark.slow
def test_predict_with_an_exported_chunk_model_matches_the_checkpoint(clips, chunk_run, tmp_path):
    folder, _ = chunk_run
    model = tmp_path / "chunks.onnx"
    assert main(["export", "--run", str(folder), "--onnx", str(model)]) == 0
    by_torch, by_onnx = tmp_path / "t.jsonl", tmp_path / "o.jsonl"
    common = [str(clips[75]), "--per-window", "--jobs", "1"]
    assert main(["predict", "--run", str(folder), *common, "--output", str(by_torch)]) == 0
    assert main(["predict", "--onnx", str(model), *common, "--output", str(by_onnx)]) == 0
    t, o = (json.loads(p.read_text()) for p in (by_torch, by_onnx))
    assert o["windows"] == t["windows"] == 3
    for name, p in t["probabilities"].items():
        assert o["probabilities"][name] == pytest.approx(p, abs=1e-5)
    for wt, wo in zip(t["per_window"], o["per_window"], strict=True):
        assert wo["start_s"] == wt["start_s"]
        for name, p in wt["probabilities"].items():
            assert wo["probabilities"][name] == pytest.approx(p, abs=1e-5)


def _peak_rss_mb(python, env, cwd, args) -> float:
    """Peak RSS (MB) of ``python -m train predict ARGS`` run in a child of a fresh interpreter."""
    code = (
        "import resource, subprocess, sys; "
        f"rc = subprocess.run([sys.executable, '-m', 'train', 'predict', *{args!r}]).returncode; "
        "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    rc, kib = done.stdout.split()[-2:]
    assert rc == "0", done.stderr[-3000:]
    return int(kib) / 1024


@pytest.fixture(scope="session")
def hour_long_mp3(tmp_path_factory):
    """A 60-minute 44.1 kHz stereo MP3: 5 minutes encoded once, its frames repeated 12 times (50 MB).

    112 kbit/s is LAME's lowest rate that keeps 44.1 kHz (below it resamples), the rate of the
    30 s clip it is compared with.
    """
    path = tmp_path_factory.mktemp("long") / "hour.mp3"
    five_minutes = encode_mp3(tones(300, seed=7), SR, 112, vbr=False)
    path.write_bytes(five_minutes * 12)
    return path


@pytest.mark.slow
def test_memory_of_a_60_minute_file_is_that_of_a_30_second_clip(
    clips, run, hour_long_mp3, python, subprocess_env, repo_root, tmp_path
):
    folder, _ = run
    common = ["--run", str(folder), "--jobs", "1", "--quiet"]
    short = _peak_rss_mb(python, subprocess_env, repo_root, [str(clips[30]), *common])
    out = tmp_path / "hour.jsonl"
    long = _peak_rss_mb(
        python, subprocess_env, repo_root, [str(hour_long_mp3), *common, "--output", str(out)]
    )
    record = json.loads(out.read_text())
    plan = window_plan(RECIPE, SR)
    assert record["windows"] == len(window_starts(int(3600 * SR), plan.window, plan.hop, plan.grid)) == 244
    print(
        f"peak RSS: 30 s clip {short:.0f} MB, 60-minute file {long:.0f} MB (+{long - short:.0f} MB)",
        file=sys.stderr,
    )
    assert long - short <= 100, (short, long)


def test_a_file_whose_decoder_crashes_or_hangs_gets_its_row_and_the_others_are_scored(
    clips, run, tmp_path, monkeypatch
):
    """Real signals: the worker decoding 000001 segfaults (twice: retried once), 000004's is SIGKILLed (the
    OOM killer), 000002's hangs with SIGALRM blocked and is killed from outside after --timeout."""
    folder, checkpoint = run
    music = tmp_path / "music"
    music.mkdir()
    for i, seconds in enumerate((20, 30, 20, 75, 30), start=1):
        (music / f"{i:06d}.mp3").write_bytes(clips[seconds].read_bytes())
    monkeypatch.setenv(FAULTS_ENV, "000001:segv,000002:hang,000004:kill")
    out = tmp_path / "results.jsonl"
    began = time.monotonic()
    code = main(
        ["predict", "--run", str(folder), str(music), "--output", str(out), "--jobs", "2", "--timeout", "5"]
    )
    took = time.monotonic() - began
    assert code == 1
    rows = {Path(r["path"]).stem: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["000001"]["error"] == "decoder crashed: SIGSEGV"
    assert rows["000002"]["error"] == "timed out after 5 s"
    assert rows["000004"]["error"] == "decoder crashed: SIGKILL"
    for stem, seconds in (("000003", 20), ("000005", 30)):
        assert rows[stem]["error"] is None
        expected, _ = direct_scores(checkpoint, window_images(clips[seconds], RECIPE).images)
        got = [rows[stem]["probabilities"][n] for n in checkpoint["class_names"]]
        np.testing.assert_allclose(got, expected.mean(axis=0), atol=1e-6)
    assert took < 120, took


def test_embed_over_files_lists_a_crashing_file_and_embeds_the_others(clips, run, tmp_path, monkeypatch):
    folder, _ = run
    music = tmp_path / "music"
    music.mkdir()
    for i, seconds in enumerate((20, 30, 20), start=1):
        (music / f"{i:06d}.mp3").write_bytes(clips[seconds].read_bytes())
    monkeypatch.setenv(FAULTS_ENV, "000002:segv")
    out = tmp_path / "emb.h5"
    assert main(["embed", "--run", str(folder), str(music), "--out", str(out), "--jobs", "2"]) == 1
    with h5py.File(out) as h5:
        assert [Path(p.decode()).stem for p in h5["path"][:]] == ["000001", "000003"]
        assert [Path(p.decode()).stem for p in h5["failed_path"][:]] == ["000002"]
        assert h5["failed_reason"][0].decode() == "decoder crashed: SIGSEGV"
