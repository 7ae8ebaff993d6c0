"""Short chunks: the crop and chunk plans, crops read from the shards, crop training and
chunk-averaged scoring (validation, test) on a shard set with a fine image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests._shardset import FINE_RECIPE, fit_argv, make_shard_set
from train.__main__ import main
from train.checkpoint import load_checkpoint
from train.chunks import chunk_starts, crop_starts, mean_over_chunks, split_chunks
from train.dataset import ShardDataset
from train.inference import score_batch
from train.models import ModelConfig, build_model
from train.sampling import EpochBatchSampler

WIDTH = FINE_RECIPE["n_frames"]  # 300


@pytest.fixture(scope="module")
def fine_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fine")
    return folder, make_shard_set(folder, {"train": [40, 40], "validation": [24], "test": [24]}, fine=True)


@pytest.mark.parametrize(
    "width, crop, expected",
    [
        (1271, 128, [0, 128, 256, 384, 512, 640, 768, 896, 1024, 1143]),
        (128, 128, [0]),
        (300, 100, [0, 100, 200]),
        (300, 128, [0, 128, 172]),
    ],
)
def test_chunks_cover_every_frame_at_full_length(width, crop, expected):
    starts = chunk_starts(width, crop)
    assert starts.tolist() == expected
    covered = np.zeros(width, bool)
    for s in starts:
        covered[s : s + crop] = True
    assert covered.all() and (starts + crop <= width).all()


def test_crop_starts_are_a_seeded_pure_function_inside_the_image():
    a = crop_starts(500, 1271, 128, seed=3, epoch=7)
    assert np.array_equal(a, crop_starts(500, 1271, 128, seed=3, epoch=7))
    assert not np.array_equal(a, crop_starts(500, 1271, 128, seed=3, epoch=8))
    assert a.min() >= 0 and a.max() <= 1271 - 128 and len(np.unique(a)) > 300
    with pytest.raises(ValueError, match="does not fit"):
        crop_starts(5, 100, 128, 0, 0)


def test_split_chunks_and_their_mean():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 1, 3, 10)
    chunks, count = split_chunks(x, 4)  # starts 0, 4, 6
    assert count == 3 and chunks.shape == (6, 1, 3, 4)
    assert torch.equal(chunks[1], x[0, :, :, 4:8]) and torch.equal(chunks[5], x[1, :, :, 6:10])
    whole, one = split_chunks(x, 10)
    assert one == 1 and whole is x
    values = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    assert torch.equal(mean_over_chunks(values, 3), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))


@pytest.mark.parametrize("reader", ["memmap", "ram", "gzip"])
def test_crops_read_from_the_shards_equal_slices_of_the_fine_images(fine_set, reader, tmp_path):
    folder, written = fine_set
    if reader == "gzip":  # compressed shards: read through h5py, one crop at a time
        folder = tmp_path
        split_sizes = {"train": [40, 40], "validation": [4], "test": [4]}
        written = make_shard_set(folder, split_sizes, fine=True, compression="gzip")
    dataset = ShardDataset(folder, "train", image="mel_fine", crop_frames=128)
    assert (dataset.shards[0].layout is None) == (reader == "gzip")
    if reader == "ram":
        dataset.preload()
    fine = written["fine"]["train"].astype(np.float32)
    assert (dataset.height, dataset.width) == (128, WIDTH) and dataset.recipe == FINE_RECIPE
    pairs = np.array([[5, 0], [41, 172], [5, 99], [79, 3]])  # across both shards, a repeat, unsorted
    x, y = dataset[pairs]
    assert x.shape == (4, 1, 128, 128) and x.dtype == torch.float32
    for row, (i, s) in enumerate(pairs):
        np.testing.assert_array_equal(x[row, 0].numpy(), fine[i, :, s : s + 128])
    assert y.tolist() == written["data"]["train"][1][pairs[:, 0]].tolist()
    whole, _ = dataset[np.array([2, 7])]
    np.testing.assert_array_equal(whole[:, 0].numpy(), fine[[2, 7]])
    with pytest.raises(IndexError, match="crop starts"):
        dataset[np.array([[0, WIDTH - 127]])]


def test_a_shard_set_without_the_fine_image_says_how_to_make_it(tmp_path):
    make_shard_set(tmp_path, {"train": [8], "validation": [4], "test": [4]})
    with pytest.raises(Exception, match="no mel_fine image.*RECIPES=reference,fine"):
        ShardDataset(tmp_path, "train", image="mel_fine")


def test_sampler_crops_are_seeded_sorted_by_index_and_differ_by_epoch():
    sampler = EpochBatchSampler(50, 8, shuffle=True, seed=1, crop=(WIDTH, 128))
    sampler.set_epoch(2)
    first = sampler.batches()
    assert first[0].shape == (8, 2) and all((np.diff(b[:, 0]) >= 0).all() for b in first)
    assert sorted(np.concatenate(first)[:, 0].tolist()) == list(range(50))
    again = EpochBatchSampler(50, 8, shuffle=True, seed=1, crop=(WIDTH, 128))
    again.set_epoch(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again.batches(), strict=True))
    sampler.set_epoch(3)
    assert not np.array_equal(np.concatenate(first), np.concatenate(sampler.batches()))


def test_chunk_scoring_is_the_mean_of_each_chunks_softmax():
    torch.manual_seed(0)
    model = build_model(ModelConfig("shortchunk", 5, {"width": 8})).eval()
    x = torch.randn(3, 1, 128, WIDTH)
    got = score_batch(model, x, torch.device("cpu"), chunk_frames=128)
    with torch.no_grad():
        per_chunk = [torch.softmax(model(x[..., s : s + 128]), dim=1) for s in chunk_starts(WIDTH, 128)]
    torch.testing.assert_close(got, torch.stack(per_chunk).mean(dim=0))
    assert not torch.allclose(got, per_chunk[0])


def _fit_chunks(folder, run, *extra):
    argv = fit_argv(folder, run, "--image", "mel_fine", "--crop-frames", "128", *extra)
    argv[argv.index("--model") + 1] = "shortchunk"
    return main([*argv, "--width", "8"])


def test_crop_training_learns_and_test_scores_by_chunks(fine_set, tmp_path):
    folder, _ = fine_set
    run = tmp_path / "run"
    # 80 steps of 8: BatchNorm's running statistics (what evaluation uses) settle in that many.
    argv = ("--epochs", "8", "--batch-size", "8", "--lr", "0.003", "--optimizer", "adamw")
    assert _fit_chunks(folder, run, *argv) == 0
    best = load_checkpoint(run / "best.pt")
    assert best["recipe"] == FINE_RECIPE and best["config"]["crop_frames"] == 128
    history = best["history"]
    assert history[-1]["val_accuracy"] > 0.8  # 4 classes: chance is 0.25
    assert main(["test", "--shards", str(folder), "--run", str(run), "--device", "cpu"]) == 0
    report = json.loads((run / "test_report.json").read_text())
    assert report["accuracy"] > 0.8
    # A model trained on the fine image is refused on the coarse one (other recipe).
    coarse = tmp_path / "coarse"
    make_shard_set(coarse, {"train": [8], "validation": [4], "test": [4]})
    assert main(["test", "--shards", str(coarse), "--run", str(run), "--device", "cpu"]) == 2


def test_validate_every_skips_validation_but_not_the_last_epoch(fine_set, tmp_path):
    folder, _ = fine_set
    run = tmp_path / "run"
    assert (
        _fit_chunks(folder, run, "--epochs", "3", "--validate-every", "2", "--max-steps-per-epoch", "2") == 0
    )
    history = load_checkpoint(run / "last.pt")["history"]
    validated = [np.isfinite(h["val_macro_f1"]) for h in history]
    assert validated == [False, True, True]
    assert load_checkpoint(run / "best.pt")["epoch"] in (2, 3)


def test_an_ensemble_trains_and_tests_as_one_model(fine_set, tmp_path, capsys):
    """--members 2: one checkpoint holding both members, and test scores with their mean; resuming
    it as another model is refused."""
    from train.inference import load_model

    folder, _ = fine_set
    run = tmp_path / "run"
    assert _fit_chunks(folder, run, "--members", "2", "--epochs", "2", "--max-steps-per-epoch", "3") == 0
    best = load_checkpoint(run / "best.pt")
    assert best["model"]["options"]["members"] == 2 and best["config"]["members"] == 2
    assert {k.split(".")[1] for k in best["state_dict"] if k.startswith("members.")} == {"0", "1"}
    assert main(["fit", "--run", str(run), "--resume", "--members", "3", "--epochs", "3"]) == 2
    assert "resume without changing the model" in capsys.readouterr().err
    assert main(["test", "--shards", str(folder), "--run", str(run), "--device", "cpu"]) == 0
    report = json.loads((run / "test_report.json").read_text())
    data = ShardDataset(folder, "test", image="mel_fine")
    x, y = data.gather(np.arange(len(data)))
    norm = best["normalization"]
    x = (x - norm["mean"].view(1, 1, 128, 1)) / norm["std"].view(1, 1, 128, 1)
    model = load_model(best, torch.device("cpu"))
    predicted = score_batch(model, x, torch.device("cpu"), chunk_frames=128).argmax(1).numpy()
    assert (
        np.asarray(report["confusion_matrix"]).sum(axis=0).tolist()
        == np.bincount(predicted, minlength=4).tolist()
    )


@pytest.mark.slow
def test_resumed_crop_training_equals_an_uninterrupted_run(fine_set, tmp_path):
    """With an ensemble of 2, mixup's soft targets, a time mask and EMA: every piece of state resumes."""
    folder, _ = fine_set
    common = ("--max-steps-per-epoch", "3", "--mixup-alpha", "0.2", "--time-masks", "1", "--ema-decay", "0.9")
    common += ("--members", "2")
    assert _fit_chunks(folder, tmp_path / "straight", "--epochs", "2", *common) == 0
    assert _fit_chunks(folder, tmp_path / "resumed", "--epochs", "1", *common) == 0
    assert main(["fit", "--run", str(tmp_path / "resumed"), "--resume", "--epochs", "2"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for x, y in (
        (a["state_dict"], b["state_dict"]),
        (a["ema_state_dict"]["weights"], b["ema_state_dict"]["weights"]),
    ):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
