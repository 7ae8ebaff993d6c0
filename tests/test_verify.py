"""verify: a flipped byte, a truncated shard, a manifest that disagrees are caught, naming the file."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from preprocess import driver
from preprocess.options import FeatureOptions
from preprocess.verify import verify_shards
from shards import data_layout, read_manifest


@pytest.fixture(scope="module")
def shard_set(mini_fma, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify-shards")
    # A small shard set: the medium subset (fewer tracks), big shards.
    driver.run_features(
        FeatureOptions(mini_fma[0], out, subset="medium", jobs=2, shard_size=64, progress=False)
    )
    return out


@pytest.fixture
def copy(shard_set, tmp_path):
    dst = tmp_path / "set"
    shutil.copytree(shard_set, dst)
    return dst


def _first_shard(folder):
    return folder / read_manifest(folder)["shards"][0]["name"]


def test_good_set_passes(shard_set, python, subprocess_env):
    assert verify_shards(shard_set) == []
    result = subprocess.run(
        [python, "-m", "preprocess", "verify", str(shard_set), "--no-progress"],
        env=subprocess_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_flipped_byte_in_an_image_is_caught(copy, python, subprocess_env):
    path = _first_shard(copy)
    layout = data_layout(path)
    with open(path, "r+b") as fh:
        fh.seek(layout.offset + 4 * 128 * 128 + 777)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x01]))
    problems = verify_shards(copy)
    assert len(problems) == 1 and str(path) in problems[0] and "checksum" in problems[0]
    result = subprocess.run(
        [python, "-m", "preprocess", "verify", str(copy), "--no-progress"],
        env=subprocess_env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and path.name in result.stderr


def test_truncated_shard_is_caught(copy):
    path = _first_shard(copy)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    problems = verify_shards(copy)
    assert len(problems) == 1 and str(path) in problems[0]


def test_manifest_that_disagrees_is_caught(copy):
    manifest_path = copy / "manifest.json"
    text = manifest_path.read_text()
    entry = read_manifest(copy)["shards"][0]
    manifest_path.write_text(text.replace(entry["checksum"], "sha256:" + "0" * 64))
    problems = verify_shards(copy)
    assert any("differs from the manifest" in p and entry["name"] in p for p in problems)


def test_missing_shard_and_manifest_are_caught(copy):
    _first_shard(copy).unlink()
    problems = verify_shards(copy)
    assert len(problems) == 1 and "missing" in problems[0]
    (copy / "manifest.json").unlink()
    assert "no manifest" in verify_shards(copy)[0]
