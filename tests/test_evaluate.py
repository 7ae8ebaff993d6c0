"""Metrics against scikit-learn, the test report and plot, and predict on generated audio."""

from __future__ import annotations

import json
import subprocess

import matplotlib.image
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from tests._shardset import make_shard_set
from train import metrics
from train.__main__ import main
from train.checkpoint import load_checkpoint
from train.dataset import ShardDataset
from train.inference import load_model
from train.normalization import standardize
from train.tasks import SingleLabel


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    k = 6
    y_true = rng.integers(0, k - 1, size=200)  # class 5 never true
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, k, size=200))
    y_pred[y_pred == 4] = 3  # class 4 never predicted
    scores = rng.random((200, k))
    scores[np.arange(200), y_pred] += 1.0
    result = metrics.summary(y_true, y_pred, k, scores)
    np.testing.assert_array_equal(result["confusion"], skm.confusion_matrix(y_true, y_pred, labels=range(k)))
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert result["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert result["top3_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y_true, scores, k=3, labels=range(k))
    )
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(k), zero_division=0)
    np.testing.assert_allclose(result["precision"], p)
    np.testing.assert_allclose(result["recall"], r)
    np.testing.assert_allclose(result["f1"], f)
    np.testing.assert_array_equal(result["support"], s)


def test_metrics_reject_bad_labels():
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="differ in length"):
        metrics.summary([0, 1], [0], 2)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalset")
    # 5 classes, 30% of the labels wrong, 3 short epochs: an imperfect model with varied predictions,
    # so the numbers are non-trivial (~0.57 accuracy).
    make_shard_set(
        folder / "shards",
        {"train": [100], "validation": [20], "test": [37, 30]},
        num_classes=5,
        seed=4,
        label_noise=0.3,
    )
    run = folder / "run"
    assert (
        main(
            [
                "fit",
                "--shards",
                str(folder / "shards"),
                "--run",
                str(run),
                "--epochs",
                "3",
                "--batch-size",
                "16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return folder / "shards", run


@pytest.mark.slow
def test_test_report_and_plot_have_the_right_numbers(trained_run, capsys):
    shards_dir, run = trained_run
    assert main(["test", "--shards", str(shards_dir), "--run", str(run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run / "test_report.json").read_text())

    # Recompute the predictions independently: the checkpoint's model on the raw test images.
    checkpoint = load_checkpoint(run / "best.pt")
    model = load_model(checkpoint, torch.device("cpu"))
    dataset = ShardDataset(shards_dir, "test")
    x, y = dataset[np.arange(len(dataset))]
    mean, std = checkpoint["normalization"]["mean"], checkpoint["normalization"]["std"]
    with torch.no_grad():
        scores = torch.softmax(model((x - mean[None, None, :, None]) / std[None, None, :, None]), 1).numpy()
    y_true, y_pred = y.numpy(), scores.argmax(1)
    k = 5

    assert report["num_samples"] == 67
    assert 0.3 < report["accuracy"] < 0.95 and len(set(y_pred.tolist())) >= 3
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert report["top3_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y_true, scores, k=3, labels=range(k))
    )
    np.testing.assert_array_equal(
        report["confusion_matrix"], skm.confusion_matrix(y_true, y_pred, labels=range(k))
    )
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(k), zero_division=0)
    for i, name in enumerate(report["class_names"]):
        row = report["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (p[i], r[i], f[i], s[i])
        )
    assert f"{report['macro_f1']:.4f}" in printed and "genre04" in printed

    image = matplotlib.image.imread(run / "confusion.png")
    assert image.ndim == 3 and image.shape[0] >= 400 and image.shape[1] >= 400
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_build_report_structure():
    labels = np.array([0, 1, 1])
    report = SingleLabel(["a", "b"]).report(labels, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), labels)
    assert report["confusion_matrix"] == [[1, 0], [1, 1]]
    assert report["per_class"]["b"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    json.dumps(report)


@pytest.mark.slow
def test_predict_names_the_genre_of_a_clearly_separable_generated_clip(
    mini_fma, tmp_path, python, subprocess_env, repo_root
):
    """Needs the features stage (preprocess.audio, python -m preprocess features) and the generator."""
    fma_dir, truth = mini_fma
    shards_dir, run = tmp_path / "shards", tmp_path / "run"

    def cli(*args):
        out = subprocess.run(
            [python, "-m", *args],
            cwd=repo_root,
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    cli(
        "preprocess",
        "features",
        "--fma-dir",
        str(fma_dir),
        "--subset",
        "large",
        "--out",
        str(shards_dir),
        "--jobs",
        "2",
    )
    if not (shards_dir / "manifest.json").exists():
        cli("preprocess", "finalize", str(shards_dir))
    # ~60 training tracks of 16 genres: small batches and 20 epochs (~60 steps) to learn the easy ones.
    assert (
        main(
            [
                "fit",
                "--shards",
                str(shards_dir),
                "--run",
                str(run),
                "--epochs",
                "20",
                "--milestones",
                "16",
                "--batch-size",
                "16",
                "--device",
                "cpu",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    assert main(["test", "--shards", str(shards_dir), "--run", str(run), "--device", "cpu"]) == 0
    report = json.loads((run / "test_report.json").read_text())
    best_genre = max(report["class_names"], key=lambda g: report["per_class"][g]["f1"])
    assert report["per_class"][best_genre]["f1"] >= 0.8, report["per_class"]

    # A test clip of that genre which the model gets right from its stored image...
    checkpoint = load_checkpoint(run / "best.pt")
    model = load_model(checkpoint, torch.device("cpu"))
    test_set = ShardDataset(shards_dir, "test")
    x, y = test_set[np.arange(len(test_set))]
    x = standardize(x, checkpoint["normalization"])
    with torch.no_grad():
        stored = torch.softmax(model(x), 1).numpy()
    genre = test_set.class_names.index(best_genre)
    hits = np.flatnonzero((y.numpy() == genre) & (stored.argmax(1) == genre))
    assert hits.size, "a class with F1 >= 0.8 has correctly classified test tracks"
    track_id = int(test_set.track_ids[hits[0]])
    assert truth["tracks"][str(track_id)]["genre_top"] == best_genre
    clip = fma_dir / truth["tracks"][str(track_id)]["path"]

    # ...is named by predict from the MP3 itself; its first window has the probabilities of the
    # stored image.
    line = cli("train", "predict", "--run", str(run), str(clip), "--first-window").strip().splitlines()[-1]
    top_genre = line.split(": ", 1)[1].split(", ")[0].rsplit(" ", 1)[0]
    assert top_genre == best_genre, line
    from train.predict import PredictOptions, predict_tracks
    from train.scorers import TorchScorer

    [result] = predict_tracks([clip], TorchScorer(checkpoint), PredictOptions(first_only=True))
    assert result.error is None and result.windows == 1
    np.testing.assert_allclose(result.probabilities, stored[hits[0]], atol=1e-3)
