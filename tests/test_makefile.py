"""The Makefile passes paths as users have them: spaces and non-ASCII characters in FMA_DIR, SHARDS, RUN.

The targets run for real on a copy of the generated mini-FMA under a folder named like
``my music/fmä``; every recipe's command line is also checked word by word with ``make -n``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ODD = "my music/fmä 'live' (2)"


def _make(
    *args: str, python: str, env: dict | None = None, dry_run: bool = False
) -> subprocess.CompletedProcess:
    """Run make in the repository with this interpreter as PY and without the setup step."""
    cmd = ["make", "--no-print-directory", "-C", str(REPO), f"PY={python}", "STAMP=", *args]
    if dry_run:
        cmd.insert(1, "-n")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize(
    "target, flag, variable",
    [
        ("features", "--fma-dir", "FMA_DIR"),
        ("features", "--out", "SHARDS"),
        ("download", "--fma-dir", "FMA_DIR"),
        ("features-slurm", "--fma-dir", "FMA_DIR"),
        ("features-slurm", "--out", "SHARDS"),
        ("features", "--audio-zip", "AUDIO_ZIP"),
        ("features-slurm", "--audio-zip", "AUDIO_ZIP"),
        ("finalize", None, "SHARDS"),
        ("verify", None, "SHARDS"),
        ("train", "--shards", "SHARDS"),
        ("train", "--run", "RUN"),
        ("test", "--shards", "SHARDS"),
        ("test", "--run", "RUN"),
        ("demo", "--out", "DEMO_DIR"),
        ("clean", None, "DEMO_DIR"),
    ],
)
def test_each_recipe_passes_an_odd_path_as_one_argument(target, flag, variable, python):
    value = f"/tmp/x/{ODD}/{variable.lower()}"
    done = _make(target, f"{variable}={value}", "SCHEDULER=tcp://h:1", python=python, dry_run=True)
    assert done.returncode == 0, done.stderr
    # The recipes' commands as the shell would split them (make -n prints, runs nothing).
    lines = done.stdout.replace("\\\n", " ").splitlines()
    argvs = [shlex.split(line) for line in lines if line.strip()]
    if flag is None:
        assert any(value in argv for argv in argvs), done.stdout
    else:
        assert any(
            argv[i + 1] == value for argv in argvs for i, word in enumerate(argv[:-1]) if word == flag
        ), done.stdout


@pytest.mark.slow
def test_targets_run_on_paths_with_spaces_and_non_ascii(mini_fma, tmp_path, python, subprocess_env):
    base = tmp_path / ODD
    fma_dir, shards, run = base / "fma data", base / "shärds", base / "rün one"
    shutil.copytree(mini_fma[0], fma_dir)
    common = [f"FMA_DIR={fma_dir}", f"SHARDS={shards}", f"RUN={run}", "SUBSET=large", "JOBS=2", "DEVICE=cpu"]

    done = _make("features", *common, python=python, env=subprocess_env)
    assert done.returncode == 0, done.stderr
    assert (shards / "manifest.json").is_file()
    for target in ("finalize", "verify"):
        done = _make(target, *common, python=python, env=subprocess_env)
        assert done.returncode == 0, done.stderr
    done = _make(
        "features-slurm", *common, "SLURM_ARGS=--dry-run --cpus-per-task 1", python=python, env=subprocess_env
    )
    assert done.returncode == 0, done.stderr
    assert "every shard is complete" in done.stdout + done.stderr
    done = _make("train", *common, "EPOCHS=1", python=python, env=subprocess_env)
    assert done.returncode == 0, done.stderr
    assert (run / "best.pt").is_file()
    done = _make("test", *common, python=python, env=subprocess_env)
    assert done.returncode == 0, done.stderr
    assert (run / "test_report.json").is_file()


def test_train_config_takes_the_recipe_file_and_its_epochs_unless_given(python):
    def argv(*args):
        done = _make("train", *args, python=python, dry_run=True)
        assert done.returncode == 0, done.stderr
        return shlex.split(done.stdout.replace("\\\n", " "))

    strong = argv("CONFIG=strong")
    assert strong[strong.index("--config") + 1] == "train/configs/strong.yaml"
    assert "--epochs" not in strong and "--model" not in strong
    assert strong[strong.index("--run") + 1] == "runs/strong-large"
    assert (REPO / "train" / "configs" / "strong.yaml").is_file()
    again = argv("CONFIG=reference", "EPOCHS=30")
    assert again[again.index("--epochs") + 1] == "30" and "--model" not in again
    plain = argv()
    assert "--config" not in plain and plain[plain.index("--epochs") + 1] == "20"


def test_target_and_task_reach_their_flags_and_default_folders(python):
    """make features TARGET=genres_all, make train/test TASK=multilabel: the flags, and default folders of
    their own (a multi-label set or run never lands on the single-label ones)."""

    def argv(*args):
        done = _make(*args, python=python, dry_run=True)
        assert done.returncode == 0, done.stderr
        return shlex.split(done.stdout.replace("\\\n", " "))

    features = argv("features", "TARGET=genres_all")
    assert features[features.index("--target") + 1] == "genres_all"
    assert features[features.index("--out") + 1] == "shards/fma_large-genres"
    train = argv("train", "TASK=multilabel")  # the multi-label recipe, unless CONFIG is given
    assert train[train.index("--task") + 1] == "multilabel"
    assert train[train.index("--config") + 1] == "train/configs/multilabel.yaml"
    assert train[train.index("--shards") + 1] == "shards/fma_large-genres"
    assert train[train.index("--run") + 1] == "runs/multilabel-large"
    test = argv("test", "TASK=multilabel")
    assert test[test.index("--run") + 1] == "runs/multilabel-large"
    strong = argv("train", "TASK=multilabel", "CONFIG=strong")
    assert strong[strong.index("--config") + 1] == "train/configs/strong.yaml"
    assert strong[strong.index("--run") + 1] == "runs/strong-large-multilabel"
    plain = argv("features") + argv("train")
    assert "--target" not in plain and "--task" not in plain and "shards/fma_large" in plain
    demo = argv("demo", "TASK=multilabel")
    assert demo[demo.index("--target") + 1] == "genres_all" and demo[demo.index("--task") + 1] == "multilabel"
    assert demo[demo.index("--config") + 1] == "train/configs/multilabel.yaml" and "8" in demo
    assert "shards/demo-multilabel" in demo and "runs/demo-multilabel" in demo


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_multilabel_demo_beats_the_label_frequency_baseline(tmp_path, python, subprocess_env):
    """`make demo TASK=multilabel` end to end (the 400-track mini-FMA, genres_all shards, the multi-label
    recipe for 8 epochs, test): the CNN's macro mAP beats the label-frequency baseline scored on the same
    test split by a clear margin, tracks without a top-level genre take part, and sub-genres are learned."""
    import json

    import numpy as np

    from shards import read_manifest

    shards, run = tmp_path / "shards", tmp_path / "run"
    done = _make(
        "demo",
        "TASK=multilabel",
        f"DEMO_DIR={tmp_path / 'mini-fma'}",
        f"DEMO_SHARDS={shards}",
        f"DEMO_RUN={run}",
        "JOBS=2",
        "DEVICE=cpu",
        python=python,
        env=subprocess_env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "genres_all: " in done.stdout and "frequency baseline mAP" in done.stdout
    report = json.loads((run / "test_report.json").read_text())
    baseline = report["frequency_baseline"]["macro_map"]
    print(f"demo: CNN macro mAP {report['macro_map']:.3f}, label-frequency baseline {baseline:.3f}")
    assert report["macro_map"] > baseline + 0.2
    assert report["macro_auc"] > 0.75 and report["top_genre_accuracy"] > 0.3
    totals = read_manifest(shards)["totals"]
    assert all(totals[split]["no_top_genre"] > 0 for split in ("train", "test"))
    # Sub-genres are learned too: their mean AP against the baseline's (a genre's share of the tracks).
    sub = [r for name, r in report["per_genre"].items() if r["ap"] is not None and name != r["top_level"]]
    sub_ap = float(np.mean([r["ap"] for r in sub]))
    sub_baseline = float(np.mean([r["support"] / report["num_samples"] for r in sub]))
    assert len(sub) >= 10 and sub_ap > sub_baseline + 0.2, (sub_ap, sub_baseline)
    assert (run / "genre_ap.png").is_file()
