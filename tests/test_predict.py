"""Whole-track prediction on generated MP3s: windows, images, scores, folders, failures, memory, ONNX."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from preprocess.audio import decode, image_of, track_image
from preprocess.recipe import Recipe
from preprocess.synth.audio import encode_mp3
from preprocess.windows import hop_length, window_images, window_length, window_starts
from tests._inference import SR, direct_scores, make_checkpoint, tones, write_mp3
from train.__main__ import main

RECIPE = Recipe()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        seconds: write_mp3(folder / f"clip{seconds}.mp3", seconds, seed=i)
        for i, seconds in enumerate((3, 20, 30, 75))
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    checkpoint = make_checkpoint(folder / "best.pt", "seed", num_classes=5)
    return folder, checkpoint


@pytest.mark.parametrize("seconds", [20, 30, 75])
def test_each_window_image_is_the_features_stage_image_of_that_excerpt(clips, seconds):
    hop_s = 10.0
    result = window_images(clips[seconds], RECIPE, hop_s=hop_s)
    waveform, rate = decode(clips[seconds])  # the whole file, decoded at once
    window, hop = window_length(RECIPE, rate), hop_length(hop_s, rate)
    starts = window_starts(waveform.shape[1], window, hop)
    assert len(starts) == {20: 1, 30: 2, 75: 6}[seconds]
    np.testing.assert_allclose(result.starts_s, np.array(starts) / rate)
    assert result.images.shape == (len(starts), 128, 128) and result.silent == 0
    for start, image in zip(starts, result.images, strict=True):
        expected = image_of(waveform[:, start : start + window], rate, RECIPE).image
        np.testing.assert_array_equal(image, expected)
    # The first window is exactly the image the features stage stores for the track.
    np.testing.assert_array_equal(result.images[0], track_image(clips[seconds], RECIPE).image)
    assert result.seconds == pytest.approx(waveform.shape[1] / rate)


def test_track_scores_are_the_mean_of_the_window_scores(clips, run, tmp_path):
    folder, checkpoint = run
    out = tmp_path / "r.jsonl"
    code = main(
        [
            "predict",
            "--run",
            str(folder),
            str(clips[75]),
            "--per-window",
            "--output",
            str(out),
            "--jobs",
            "1",
            "--top",
            "5",
        ]
    )
    assert code == 0
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    windows = window_images(clips[75], RECIPE)  # default hop: half a window
    assert record["windows"] == len(windows.starts_s) == 5
    per_window = np.array(
        [[w["probabilities"][n] for n in checkpoint["class_names"]] for w in record["per_window"]]
    )
    expected, _ = direct_scores(checkpoint, windows.images)
    np.testing.assert_allclose(per_window, expected, atol=1e-6)
    track = np.array([record["probabilities"][n] for n in checkpoint["class_names"]])
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
    assert (
        record["windows"]
        == len(
            window_starts(int(3600 * SR), window_length(RECIPE, SR), hop_length(RECIPE.duration_s / 2, SR))
        )
        == 244
    )
    print(
        f"peak RSS: 30 s clip {short:.0f} MB, 60-minute file {long:.0f} MB (+{long - short:.0f} MB)",
        file=sys.stderr,
    )
    assert long - short <= 100, (short, long)
