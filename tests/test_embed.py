"""``train embed``: the HDF5 file holds the same vectors as a direct forward pass."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from preprocess.recipe import RECIPES, Recipe
from preprocess.windows import window_images
from tests._inference import direct_scores, make_checkpoint, write_mp3
from tests._shardset import FINE_RECIPE, make_shard_set
from train.__main__ import main
from train.dataset import ShardDataset
from train.inference import load_model


@pytest.mark.parametrize("name", ["seed", "resnet"])
def test_embed_shards_round_trips(name, tmp_path, capsys):
    shards_dir = tmp_path / "shards"
    make_shard_set(shards_dir, {"train": [6], "validation": [4], "test": [9, 8]}, num_classes=4, seed=2)
    run = tmp_path / "run"
    run.mkdir()
    class_names = [f"genre{c:02d}" for c in range(4)]
    checkpoint = make_checkpoint(run / "best.pt", name, num_classes=4, class_names=class_names)
    out = tmp_path / "emb.h5"
    assert (
        main(["embed", "--run", str(run), "--shards", str(shards_dir), "--split", "test", "--out", str(out)])
        == 0
    )
    assert f"{out}: 17 tracks" in capsys.readouterr().out

    dataset = ShardDataset(shards_dir, "test")
    x, y = dataset.gather(np.arange(len(dataset)))
    model = load_model(checkpoint, torch.device("cpu"))
    mean = checkpoint["normalization"]["mean"].reshape(1, 1, 128, 1)
    std = checkpoint["normalization"]["std"].reshape(1, 1, 128, 1)
    with torch.no_grad():
        expected = model.embed((x - mean) / std).numpy()
    with h5py.File(out) as h5:
        np.testing.assert_allclose(h5["embedding"][:], expected, rtol=1e-5, atol=1e-5)
        assert h5["embedding"].shape == (17, model.embedding_dim)
        np.testing.assert_array_equal(h5["track_id"][:], dataset.track_ids)
        np.testing.assert_array_equal(h5["label"][:], y.numpy())
        assert json.loads(h5.attrs["class_names"]) == class_names
        assert json.loads(h5.attrs["source"]) == {"shards": str(shards_dir), "split": "test"}
    assert np.abs(expected).std() > 1e-3  # the vectors are not constant


def test_embed_files_gives_the_whole_track_mean_and_lists_failures(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    checkpoint = make_checkpoint(run / "best.pt", "seed", num_classes=5)
    music = tmp_path / "music"
    music.mkdir()
    long_clip = write_mp3(music / "long.mp3", 50, seed=1)
    short_clip = write_mp3(music / "short.mp3", 12, seed=2)
    (music / "broken.mp3").write_bytes(b"ID3" + bytes(300))
    out = tmp_path / "emb.h5"
    assert main(["embed", "--run", str(run), str(music), "--out", str(out), "--jobs", "1"]) == 1
    assert f"{out}: 2 files, 1 failed" in capsys.readouterr().out
    with h5py.File(out) as h5:
        paths = [p.decode() for p in h5["path"][:]]
        assert paths == [str(long_clip), str(short_clip)]
        assert h5["windows"][:].tolist() == [3, 1]
        assert [p.decode() for p in h5["failed_path"][:]] == [str(music / "broken.mp3")]
        assert h5["failed_reason"][0].decode().startswith("cannot decode")
        for i, clip in enumerate((long_clip, short_clip)):
            images = window_images(clip, Recipe()).images
            _, embeddings = direct_scores(checkpoint, images)
            np.testing.assert_allclose(h5["embedding"][i], embeddings.mean(axis=0), rtol=1e-5, atol=1e-5)


CHUNKS = {"image": "mel_fine", "crop_frames": 128}


def test_embed_shards_of_a_chunk_model_reads_its_fine_images_and_averages_over_chunks(tmp_path, capsys):
    shards_dir = tmp_path / "shards"
    written = make_shard_set(
        shards_dir, {"train": [6], "validation": [4], "test": [9, 8]}, num_classes=4, seed=2, fine=True
    )
    run = tmp_path / "run"
    run.mkdir()
    class_names = [f"genre{c:02d}" for c in range(4)]
    checkpoint = make_checkpoint(
        run / "best.pt",
        "shortchunk",
        num_classes=4,
        class_names=class_names,
        recipe=FINE_RECIPE,
        config=CHUNKS,
    )
    out = tmp_path / "emb.h5"
    assert main(["embed", "--run", str(run), "--shards", str(shards_dir), "--out", str(out)]) == 0
    assert f"{out}: 17 tracks" in capsys.readouterr().out
    fine = written["fine"]["test"].astype(np.float32)  # (17, 128, 300): chunks at 0, 128 and 172
    _, expected = direct_scores(checkpoint, fine)  # by hand: each chunk through the model, then the mean
    _, first_chunk = direct_scores(checkpoint, np.ascontiguousarray(fine[..., :128]))
    with h5py.File(out) as h5:
        np.testing.assert_allclose(h5["embedding"][:], expected, rtol=1e-5, atol=1e-5)
        assert json.loads(h5.attrs["recipe"]) == FINE_RECIPE
    assert np.abs(expected - first_chunk).max() > 1e-2  # the other chunks count

    # The same model on a shard set without the fine image: a one-line error with the fix.
    plain = tmp_path / "plain"
    make_shard_set(plain, {"train": [6], "validation": [4], "test": [5]}, num_classes=4, seed=2)
    assert main(["embed", "--run", str(run), "--shards", str(plain), "--out", str(tmp_path / "e2.h5")]) == 2
    assert "holds no mel_fine image" in capsys.readouterr().err


def test_embed_files_with_a_chunk_model_averages_its_windows_of_the_fine_recipe(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fine = RECIPES["fine"]
    checkpoint = make_checkpoint(
        run / "best.pt", "shortchunk", num_classes=5, recipe=fine.to_dict(), config=CHUNKS
    )
    clip = write_mp3(tmp_path / "long.mp3", 50, seed=1)
    out = tmp_path / "emb.h5"
    assert main(["embed", "--run", str(run), str(clip), "--out", str(out), "--jobs", "1"]) == 0
    windows = window_images(clip, fine, hop_s=fine.duration_s)  # a chunk model's default: a window apart
    assert windows.images.shape == (2, 128, 1271)
    _, embeddings = direct_scores(checkpoint, windows.images)
    with h5py.File(out) as h5:
        assert h5["windows"][:].tolist() == [2]
        np.testing.assert_allclose(h5["embedding"][0], embeddings.mean(axis=0), rtol=1e-5, atol=1e-5)
        assert json.loads(h5.attrs["source"])["hop_s"] == fine.duration_s


def test_embed_needs_exactly_one_source(tmp_path, capsys):
    assert main(["embed", "--run", str(tmp_path), "--out", str(tmp_path / "e.h5")]) == 2
    assert "either --shards" in capsys.readouterr().err
