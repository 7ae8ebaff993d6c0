"""The memory-mapped shard Dataset: exact contents, batch gather, workers, checks on bad shards."""

from __future__ import annotations

import json
import pickle
import subprocess

import numpy as np
import pytest
import torch

import shards
from tests._shardset import make_shard_set
from train.dataset import ShardDataset
from train.normalization import band_statistics, standardize, to_device
from train.sampling import EpochBatchSampler, batch_indices, epoch_order

COUNTS = {"train": [30, 25, 1], "validation": [12], "test": [10]}


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shardset")
    return folder, make_shard_set(folder, COUNTS, num_classes=4, seed=1)


@pytest.fixture(scope="module")
def gzip_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gzipset")
    return folder, make_shard_set(folder, COUNTS, num_classes=4, seed=1, compression="gzip")


@pytest.mark.parametrize("which", ["shard_set", "gzip_set"])
def test_dataset_returns_exactly_what_the_shards_hold(which, request):
    folder, made = request.getfixturevalue(which)
    for split in ("train", "validation", "test"):
        mel, label, track_id = made["data"][split]
        ds = ShardDataset(folder, split)
        assert len(ds) == len(label)
        assert ds.class_names == made["manifest"]["class_names"] and ds.num_classes == 4
        np.testing.assert_array_equal(ds.track_ids, track_id)
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (1, 128, 128)
            assert y.dtype == torch.int64 and int(y) == label[i]
            np.testing.assert_array_equal(x[0].numpy(), mel[i])
    train = ShardDataset(folder, "train")
    assert (train.shards[0].layout is None) == (which == "gzip_set")


@pytest.mark.parametrize("which", ["shard_set", "gzip_set"])
def test_batch_gather_equals_per_item_access(which, request):
    folder, made = request.getfixturevalue(which)
    ds = ShardDataset(folder, "train")
    rng = np.random.default_rng(3)
    for indices in (
        rng.permutation(len(ds))[:40],
        np.sort(rng.choice(len(ds), 20, replace=False)),
        np.array([5, 5, 55, 0, 54, 5]),
    ):
        x, y = ds[indices]
        assert x.shape == (len(indices), 1, 128, 128) and y.shape == (len(indices),)
        singles = [ds[int(i)] for i in indices]
        torch.testing.assert_close(x, torch.stack([s[0] for s in singles]), rtol=0, atol=0)
        torch.testing.assert_close(y, torch.stack([s[1] for s in singles]), rtol=0, atol=0)
    x, y = ds.gather([3, 1])
    np.testing.assert_array_equal(x[:, 0].numpy(), made["data"]["train"][0][[3, 1]])
    with pytest.raises(IndexError):
        ds[np.array([len(ds)])]
    x, y = ds[np.array([], dtype=np.int64)]
    assert x.shape == (0, 1, 128, 128) and y.shape == (0,)
    np.testing.assert_array_equal(ds[-1][0][0].numpy(), made["data"]["train"][0][-1])


def test_seeded_epoch_order_and_batches():
    a, b = epoch_order(100, seed=7, epoch=3), epoch_order(100, seed=7, epoch=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, epoch_order(100, seed=7, epoch=4))
    assert sorted(a.tolist()) == list(range(100))
    batches = batch_indices(a, 32, drop_last=True)
    assert [len(x) for x in batches] == [32, 32, 32]
    assert all((np.diff(x) > 0).all() for x in batches)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.sort(a[:96]))
    sampler = EpochBatchSampler(100, 32, shuffle=True, seed=7, drop_last=False)
    assert len(sampler) == len(list(sampler)) == 4


def test_dataloader_with_workers_reads_every_sample_once(shard_set):
    folder, made = shard_set
    ds = ShardDataset(folder, "train")
    ds[0]  # open a mapping in this process before the workers fork
    sampler = EpochBatchSampler(len(ds), 16, shuffle=True, seed=0)
    sampler.set_epoch(2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler, num_workers=2)
    xs, ys = zip(*loader, strict=True)
    order = np.concatenate(sampler.batches())
    np.testing.assert_array_equal(torch.cat(xs)[:, 0].numpy(), made["data"]["train"][0][order])
    np.testing.assert_array_equal(torch.cat(ys).numpy(), made["data"]["train"][1][order])


def test_mappings_are_opened_lazily_and_not_pickled(shard_set):
    folder, _ = shard_set
    ds = ShardDataset(folder, "train")
    assert ds._readers == {}
    ds[np.arange(len(ds))]
    assert len(ds._readers) == 3
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._readers == {}
    ds._open_pid = -1  # as seen from a forked child: inherited readers are dropped, not reused
    ds[0]
    assert len(ds._readers) == 1


def test_band_statistics_and_normalization(shard_set):
    folder, made = shard_set
    mel = made["data"]["train"][0].astype(np.float64)
    ds = ShardDataset(folder, "train")
    stats = band_statistics(ds)
    mean, std = stats["mean"].numpy(), stats["std"].numpy()
    assert mean.shape == std.shape == (128,)
    np.testing.assert_allclose(mean, mel.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(std, mel.std(axis=(0, 2)), rtol=1e-4)
    x, _ = ds[np.arange(len(ds))]
    expected = (mel - mean[:, None]) / std[:, None]
    np.testing.assert_allclose(standardize(x, stats)[:, 0].numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(standardize(x[0, 0], stats).numpy(), expected[0], atol=1e-4)  # one image
    assert standardize(x, None) is x
    standardize(x, to_device(stats, torch.device("cpu")), inplace=True)  # as a preloaded split
    np.testing.assert_allclose(x[:, 0].numpy(), expected, atol=1e-4)


def test_preload_ram_gives_the_same_batches(shard_set):
    folder, _ = shard_set
    mapped, preloaded = ShardDataset(folder, "train"), ShardDataset(folder, "train")
    preloaded.preload()
    indices = np.random.default_rng(0).permutation(len(mapped))
    torch.testing.assert_close(mapped[indices], preloaded[indices], rtol=0, atol=0)


def _copy_set(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_wrong_recipe_is_refused_naming_the_shard(shard_set, tmp_path):
    folder = _copy_set(shard_set[0], tmp_path / "set")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["recipe"] = {**manifest["recipe"], "n_mels": 64}
    shards.write_manifest(folder, manifest)
    with pytest.raises(shards.ShardError, match=r"train-00000-of-00003\.h5.*recipe"):
        ShardDataset(folder, "train")


def test_checksum_mismatch_is_refused_naming_the_shard(shard_set, tmp_path):
    folder = _copy_set(shard_set[0], tmp_path / "set")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][1]["checksum"] = "sha256:" + "0" * 64
    shards.write_manifest(folder, manifest)
    name = manifest["shards"][1]["name"]
    with pytest.raises(shards.ShardError, match=rf"{name}.*checksum"):
        ShardDataset(folder, manifest["shards"][1]["split"])


def test_truncated_shard_is_refused_naming_the_file(shard_set, tmp_path):
    folder = _copy_set(shard_set[0], tmp_path / "set")
    path = folder / "train-00001-of-00003.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(shards.ShardError, match=r"train-00001-of-00003\.h5"):
        ShardDataset(folder, "train")


def test_flipped_image_byte_is_caught_by_default(shard_set, tmp_path):
    folder = _copy_set(shard_set[0], tmp_path / "set")
    path = folder / "train-00000-of-00003.h5"
    layout = shards.data_layout(path, "mel")
    data = bytearray(path.read_bytes())
    data[layout.offset + 4 * 1000 + 3] ^= 0x01
    path.write_bytes(bytes(data))
    ShardDataset(folder, "train", verify=False)  # the cheap check trusts the stored checksum
    with pytest.raises(shards.ShardError, match=r"train-00000-of-00003\.h5.*checksum"):
        ShardDataset(folder, "train")


def test_train_imports_without_librosa(python, subprocess_env):
    code = (
        "import sys; sys.modules['librosa'] = None; sys.modules['preprocess.audio'] = None\n"
        "import train, train.dataset, train.sampling, train.models, train.config, train.loop\n"
        "import train.checkpoint, train.evaluate, train.metrics, train.predict, train.__main__\n"
        "import train.inference, train.normalization, train.plots\n"
        "assert 'librosa' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [python, "-c", code], env=subprocess_env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
