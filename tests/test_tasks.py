"""Multi-label genres (train/tasks.py): targets, loss and scores, metrics against scikit-learn, and a
short fit / test / resume / predict / export / embed on a generated genres_all shard set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml
from sklearn import metrics as skm

from tests._inference import make_checkpoint, write_mp3
from tests._shardset import fit_argv, genre_table, make_shard_set
from train import metrics
from train.__main__ import main
from train.checkpoint import load_checkpoint
from train.config import ConfigError, config_from_dict, load_yaml
from train.dataset import ShardDataset
from train.inference import load_model
from train.models import ModelConfig, build_model, output_layers
from train.normalization import standardize
from train.tasks import MultiLabel, build_task, sigmoid, task_from_checkpoint, task_from_dict

COUNTS = {"train": [48, 40], "validation": [32], "test": [40]}
CLASSES = [f"genre{c:02d}" for c in range(4)]


@pytest.fixture(scope="module")
def ml_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml-shards")
    return folder, make_shard_set(folder, COUNTS, num_classes=4, seed=3, multilabel=True)


# --------------------------------------------------------------------------- metrics (pure)


def test_ranking_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(2, 30))
        y = (rng.random(n) < rng.random()).astype(int)
        s = np.round(rng.random(n) * rng.integers(1, 5)) / 4  # many ties
        if y.any():
            assert metrics.average_precision(y, s) == pytest.approx(
                skm.average_precision_score(y, s), abs=1e-12
            )
        else:
            assert np.isnan(metrics.average_precision(y, s))
        if 0 < y.sum() < n:
            assert metrics.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        else:
            assert np.isnan(metrics.roc_auc(y, s))
    y = (rng.random((60, 7)) < 0.3).astype(int)
    y[:, 5] = 0  # a genre without a positive: left out of the macro means
    y[:, 6] = 1  # one without a negative: has an AP, no AUC
    s = rng.random((60, 7))
    got = metrics.multilabel_summary(y, s)
    assert got["labels_scored"] == 6 and np.isnan(got["ap"][5]) and np.isnan(got["auc"][6])
    keep = [0, 1, 2, 3, 4, 6]
    assert got["macro_map"] == pytest.approx(
        skm.average_precision_score(y[:, keep], s[:, keep], average="macro")
    )
    assert got["micro_map"] == pytest.approx(skm.average_precision_score(y, s, average="micro"))
    assert got["macro_auc"] == pytest.approx(skm.roc_auc_score(y[:, :5], s[:, :5], average="macro"))
    assert got["support"].tolist() == y.sum(axis=0).tolist()


# --------------------------------------------------------------------------- the task's parts


def test_multilabel_task_targets_loss_and_scores(ml_set):
    folder, made = ml_set
    train_set = ShardDataset(folder, "train", target="genres")
    counts = made["data"]["train"][3].sum(axis=0)
    threshold = int(np.sort(counts)[2]) + 1  # leaves out the three rarest genres (or more)
    task = build_task("multilabel", CLASSES, train_set, min_genre_tracks=threshold)
    assert task.columns == np.flatnonzero(counts >= threshold).tolist() and len(task.columns) <= 9
    table = genre_table(4)
    assert task.dropped == [
        {"id": table[j]["id"], "title": table[j]["title"], "train_tracks": int(counts[j])}
        for j in np.flatnonzero(counts < threshold)
    ]
    assert task.output_names[:4] == CLASSES and task.num_outputs == len(task.columns)  # tops: common
    assert task_from_dict(json.loads(json.dumps(task.to_dict())), CLASSES).to_dict() == task.to_dict()

    x, y = train_set.gather(np.arange(16))
    assert y.dtype == torch.uint8 and y.shape == (16, 12)
    targets = task.targets(y)
    assert targets.dtype == torch.float32 and torch.equal(targets, y[:, task.columns].float())
    logits = torch.randn(16, task.num_outputs)
    plain = task.criterion(config_from_dict({"task": "multilabel"}), train_set, "cpu")
    assert plain(logits, targets).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).item()
    )
    smooth = task.criterion(
        config_from_dict({"task": "multilabel", "label_smoothing": 0.2}), train_set, "cpu"
    )
    assert smooth(logits, targets).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, targets * 0.8 + 0.1).item()
    )
    assert torch.allclose(task.probabilities(logits), torch.sigmoid(logits))
    np.testing.assert_allclose(
        task.probabilities_np(logits.numpy()), torch.sigmoid(logits).numpy(), atol=1e-6
    )
    hits = sum(float(targets[i, int(logits[i].argmax())]) for i in range(16))
    assert task.correct(logits, y).item() == hits
    # The implied top-level genre: the highest-scoring of the top-level outputs (the first four).
    scores = np.random.default_rng(1).random((5, task.num_outputs))
    assert task.implied_top_classes(scores).tolist() == scores[:, :4].argmax(axis=1).tolist()
    assert task.implied_top_genre(scores[0]) == CLASSES[int(scores[0, :4].argmax())]
    # --sampling balanced balances top-level genres, the tracks without one as one more group
    assert task.balance_groups(train_set).min() == 0 and (train_set.labels == -1).any()
    # A new model starts at the genre frequencies: every member of an ensemble does.
    freq = np.clip(task.frequency_scores(1)[0], 1e-4, 1 - 1e-4)
    for options in ({}, {"members": 2}):
        model = build_model(ModelConfig("seed", task.num_outputs, options))
        task.init_head(model)
        heads = output_layers(model)
        assert len(heads) == options.get("members", 1)
        for head in heads:
            np.testing.assert_allclose(torch.sigmoid(head.bias).detach().numpy(), freq, rtol=1e-5)


def test_task_and_shard_set_must_fit(ml_set, tmp_path, capsys):
    folder, _ = ml_set
    plain = tmp_path / "plain"
    make_shard_set(plain, {"train": [16], "validation": [8], "test": [8]})
    cases = [
        (folder, ["--task", "single"], "have no top-level genre (a shard set made with --target genres_all)"),
        (plain, ["--task", "multilabel"], "no multi-hot genres (made without --target genres_all)"),
        (
            folder,
            ["--task", "multilabel", "--select-metric", "macro_f1"],
            "task multilabel is scored by macro_map",
        ),
        (
            folder,
            ["--task", "multilabel", "--class-weights", "balanced"],
            "class weights are for task single",
        ),
        (folder, ["--task", "multilabel", "--min-genre-tracks", "0"], "min_genre_tracks=0: must be >= 1"),
        (
            folder,
            ["--task", "multilabel", "--min-genre-tracks", "500"],
            "no genre has 500 or more training tracks",
        ),
    ]
    for i, (shards_dir, flags, message) in enumerate(cases):
        assert main(fit_argv(shards_dir, tmp_path / f"run{i}", "--epochs", "1", *flags)) == 2, flags
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (flags, err)


def test_a_yaml_config_takes_the_task(tmp_path):
    (tmp_path / "c.yaml").write_text("task: multilabel\nmin_genre_tracks: 2\nmixup_alpha: 0.2\n")
    config = config_from_dict(load_yaml(tmp_path / "c.yaml"))
    assert (config.task, config.min_genre_tracks, config.resolved_select_metric()) == (
        "multilabel",
        2,
        "macro_map",
    )
    assert config_from_dict({}).resolved_select_metric() == "macro_f1"
    # the shipped recipes select by "auto", so they train either task
    for name in ("reference", "strong", "chunks", "ensemble"):
        recipe = load_yaml(f"train/configs/{name}.yaml")
        assert config_from_dict({**recipe, "task": "multilabel"}).resolved_select_metric() == "macro_map"
    with pytest.raises(ConfigError, match="class weights are for task single"):  # resnet-adamw weighs classes
        config_from_dict({**load_yaml("train/configs/resnet-adamw.yaml"), "task": "multilabel"})


def test_every_shipped_recipe_loads_and_ensemble_is_chunks_with_two_members():
    names = sorted(p.stem for p in Path("train/configs").glob("*.yaml"))
    assert {"chunks", "ensemble", "multilabel", "reference", "strong"} <= set(names)
    for name in names:
        config_from_dict(load_yaml(f"train/configs/{name}.yaml"))
    chunks, ensemble = (load_yaml(f"train/configs/{name}.yaml") for name in ("chunks", "ensemble"))
    assert ensemble.pop("members") == 2 and "members" not in chunks
    assert chunks["freq_pools"] == 2  # chosen over 4 on the cross-validation's validation parts
    # Otherwise the same recipe: the cross-validation measured two members on top of `chunks`.
    assert ensemble == chunks


# --------------------------------------------------------------------------- fit and test


@pytest.fixture(scope="module")
def ml_run(ml_set, tmp_path_factory):
    folder, _ = ml_set
    run = tmp_path_factory.mktemp("ml-run")
    argv = fit_argv(
        folder,
        run,
        "--task",
        "multilabel",
        "--epochs",
        "3",
        "--min-genre-tracks",
        "3",
        "--optimizer",
        "adamw",
        "--lr",
        "0.003",
    )
    assert main(argv) == 0
    assert main(["test", "--shards", str(folder), "--run", str(run), "--device", "cpu"]) == 0
    return run


@pytest.mark.slow
def test_fit_picks_best_by_map_and_test_reports_like_scikit_learn(ml_set, ml_run):
    folder, made = ml_set
    run = ml_run
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    history = last["history"]
    for key in (
        "train_loss",
        "train_hit_at_1",
        "val_loss",
        "val_macro_map",
        "val_micro_map",
        "val_macro_auc",
        "val_top_genre_accuracy",
    ):
        assert all(np.isfinite(h[key]) for h in history), key
    assert best["metric_name"] == "macro_map" and best["best_metric"] == max(
        h["val_macro_map"] for h in history
    )
    task = task_from_checkpoint(best)
    assert isinstance(task, MultiLabel) and best["class_names"] == CLASSES
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "multilabel"

    # Recompute the scores here, independently of train.inference, and score them with scikit-learn.
    report = json.loads((run / "test_report.json").read_text())
    model = load_model(best, torch.device("cpu"))
    mel, labels, _, genres = made["data"]["test"]
    with torch.no_grad():
        x = standardize(torch.from_numpy(mel)[:, None], best["normalization"])
        scores = torch.sigmoid(model(x)).numpy()
    assert scores.shape == (40, task.num_outputs)  # the head has one output per kept genre
    y = genres[:, task.columns]
    scored = y.sum(axis=0) > 0
    assert report["num_samples"] == 40 and report["genres_scored"] == int(scored.sum())
    assert report["macro_map"] == pytest.approx(
        skm.average_precision_score(y[:, scored], scores[:, scored], average="macro"), abs=1e-5
    )
    assert report["micro_map"] == pytest.approx(
        skm.average_precision_score(y, scores, average="micro"), abs=1e-5
    )
    both = scored & (y.sum(axis=0) < len(y))
    assert report["macro_auc"] == pytest.approx(
        skm.roc_auc_score(y[:, both], scores[:, both], average="macro"), abs=1e-5
    )
    for j, name in enumerate(task.output_names):
        row = report["per_genre"][name]
        assert row["support"] == int(y[:, j].sum())
        if scored[j]:
            assert row["ap"] == pytest.approx(skm.average_precision_score(y[:, j], scores[:, j]), abs=1e-5)
        else:
            assert row["ap"] is None
    top = scores[:, :4].argmax(axis=1)  # the top-level genres are the first four outputs here
    labelled = labels >= 0
    assert report["top_genre_tracks"] == int(labelled.sum())
    assert report["top_genre_accuracy"] == pytest.approx(float((top[labelled] == labels[labelled]).mean()))
    # the label-frequency baseline: every test track scored by the training frequencies
    train_genres = made["data"]["train"][3][:, task.columns]
    freq = np.tile(train_genres.mean(axis=0), (len(y), 1))
    assert report["frequency_baseline"]["macro_map"] == pytest.approx(
        skm.average_precision_score(y[:, scored], freq[:, scored], average="macro")
    )
    assert report["frequency_baseline"]["macro_map"] == pytest.approx(y[:, scored].mean(axis=0).mean())
    assert report["macro_map"] > report["frequency_baseline"]["macro_map"] + 0.2  # the bands are learnable
    assert [d["title"] for d in report["dropped_genres"]] == [d["title"] for d in task.dropped]
    image = matplotlib.image.imread(run / "genre_ap.png")
    assert image.ndim == 3 and image.shape[0] >= 300 and image[..., :3].std() > 0.05
    assert not (run / "confusion.png").exists()


@pytest.mark.slow
def test_resume_with_augmentation_equals_uninterrupted(ml_set, tmp_path):
    folder, _ = ml_set
    common = (
        "--task",
        "multilabel",
        "--max-steps-per-epoch",
        "2",
        "--mixup-alpha",
        "0.4",
        "--ema-decay",
        "0.5",
        "--sampling",
        "balanced",
        "--label-smoothing",
        "0.1",
        "--freq-masks",
        "1",
        "--time-shift",
        "0.5",
    )
    assert main(fit_argv(folder, tmp_path / "straight", "--epochs", "2", *common)) == 0
    assert main(fit_argv(folder, tmp_path / "resumed", "--epochs", "1", *common)) == 0
    assert main(["fit", "--run", str(tmp_path / "resumed"), "--resume", "--epochs", "2"]) == 0
    a, b = (load_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    assert a["task"] == b["task"]
    for key in ("state_dict",):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), name
    for name, value in a["ema_state_dict"]["weights"].items():
        assert torch.equal(value, b["ema_state_dict"]["weights"][name]), name


# --------------------------------------------------------------------------- predict, export, embed


def _ml_checkpoint(path, seed: int = 0) -> dict:
    """A random multi-label checkpoint over the test genre table, its four top genres and two sub-genres."""
    table = genre_table(4)
    task = {
        "name": "multilabel",
        "class_names": CLASSES,
        "genre_table": table,
        "columns": [0, 1, 2, 3, 4, 7],
        "train_counts": [9] * 12,
        "train_tracks": 30,
        "min_genre_tracks": 5,
    }
    return make_checkpoint(path, "seed", seed=seed, class_names=CLASSES, task=task)


@pytest.mark.slow
def test_predict_gives_genre_probabilities_and_the_implied_top_genre(tmp_path):
    from preprocess.windows import file_window_images

    run = tmp_path / "run"
    run.mkdir()
    checkpoint = _ml_checkpoint(run / "best.pt")
    song = write_mp3(tmp_path / "song.mp3", 40.0, seed=2)
    out_csv, out_jsonl = tmp_path / "r.csv", tmp_path / "r.jsonl"
    assert main(["predict", "--run", str(run), str(song), "--output", str(out_csv), "--jobs", "1"]) == 0
    assert main(["predict", "--run", str(run), str(song), "--output", str(out_jsonl), "--jobs", "1"]) == 0
    windows, error = file_window_images(song, checkpoint["recipe"], None, False)
    assert error is None
    task = task_from_checkpoint(checkpoint)
    # what predict must give: the mean over windows of the sigmoid of the logits
    with torch.no_grad():
        model = load_model(checkpoint, torch.device("cpu"))
        x = standardize(torch.from_numpy(windows.images)[:, None], checkpoint["normalization"])
        expected = torch.sigmoid(model(x)).numpy().mean(axis=0)
    assert expected.shape == (task.num_outputs,) == (6,)
    record = json.loads(out_jsonl.read_text())
    got = np.array([record["probabilities"][name] for name in task.output_names])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.isclose(got.sum(), 1.0)  # one probability per genre, not a distribution
    assert record["top_level_genre"] == CLASSES[int(expected[:4].argmax())]
    assert [t["genre"] for t in record["top"]] == [task.output_names[j] for j in np.argsort(-expected)[:3]]
    rows = list(csv.DictReader(out_csv.open()))
    assert rows[0]["top_level_genre"] == record["top_level_genre"] and "p_genre00-a" in rows[0]


@pytest.mark.slow
def test_onnx_export_of_a_multilabel_head(tmp_path):
    import onnxruntime as ort

    from train.scorers import OnnxScorer, TorchScorer

    run = tmp_path / "run"
    run.mkdir()
    checkpoint = _ml_checkpoint(run / "best.pt", seed=1)
    out = tmp_path / "m.onnx"
    assert main(["export", "--run", str(run), "--onnx", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    task = task_from_checkpoint(checkpoint)
    assert json.loads(meta["fma_genre.class_names"]) == task.output_names
    assert json.loads(meta["fma_genre.task"]) == task.to_dict()
    mel = np.random.default_rng(4).normal(-40, 15, size=(5, 128, 128)).astype(np.float32)
    by_torch, by_onnx = TorchScorer(checkpoint), OnnxScorer(out)
    assert by_onnx.class_names == by_torch.class_names == task.output_names
    (p_torch, e_torch), (p_onnx, e_onnx) = by_torch(mel), by_onnx(mel)
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
    np.testing.assert_allclose(e_onnx, e_torch, atol=1e-4)
    logits = session.run(["logits"], {"mel": mel[:, None]})[0]
    np.testing.assert_allclose(p_onnx, sigmoid(logits), atol=1e-6)
    assert p_torch.std() > 1e-3


def test_embed_of_a_multilabel_model_is_as_before(ml_set, tmp_path):
    import h5py

    folder, made = ml_set
    run = tmp_path / "run"
    run.mkdir()
    _ml_checkpoint(run / "best.pt")
    out = tmp_path / "emb.h5"
    assert (
        main(["embed", "--run", str(run), "--shards", str(folder), "--split", "test", "--out", str(out)]) == 0
    )
    with h5py.File(out) as f:
        assert f["embedding"].shape == (40, 192)
        assert f["label"][()].tolist() == made["data"]["test"][1].tolist()  # -1 where no top genre
        assert json.loads(f.attrs["class_names"]) == CLASSES


@pytest.mark.slow
def test_multilabel_on_crops_of_the_fine_image(tmp_path):
    """The multi-label task composes with the fine image: random crops in training, and a clip's
    probabilities the mean of its chunks' sigmoid probabilities in validation and test."""
    from train.inference import score_batch

    folder = tmp_path / "s"
    make_shard_set(
        folder, {"train": [32], "validation": [16], "test": [16]}, seed=5, fine=True, multilabel=True
    )
    run = tmp_path / "run"
    flags = ("--task", "multilabel", "--model", "shortchunk", "--image", "mel_fine", "--crop-frames", "100")
    assert main(fit_argv(folder, run, "--epochs", "1", "--max-steps-per-epoch", "2", *flags)) == 0
    assert main(["test", "--shards", str(folder), "--run", str(run), "--device", "cpu"]) == 0
    report = json.loads((run / "test_report.json").read_text())
    assert report["num_samples"] == 16 and np.isfinite(report["macro_map"])
    checkpoint = load_checkpoint(run / "best.pt")
    task, model = task_from_checkpoint(checkpoint), load_model(checkpoint, torch.device("cpu"))
    x, _ = ShardDataset(folder, "test", image="mel_fine", target="genres").gather(np.arange(4))
    x = standardize(x, checkpoint["normalization"])
    got = score_batch(model, x, torch.device("cpu"), 100, task.probabilities)
    with torch.no_grad():
        by_hand = torch.stack([torch.sigmoid(model(x[..., k * 100 : (k + 1) * 100])) for k in range(3)]).mean(
            0
        )
    torch.testing.assert_close(got, by_hand)
