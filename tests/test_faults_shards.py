"""Bad shard sets: `python -m preprocess verify` and the training Dataset each name the bad file.

The faults (issue 6): a flipped byte, a truncated file, a shard from another recipe, a missing
shard, a manifest that disagrees (checksum or track count). Which test holds each combination
(combinations already tested elsewhere are not repeated here):

- flipped byte: verify -> test_verify::test_flipped_byte_in_an_image_is_caught (function and CLI);
  Dataset -> test_dataset::test_flipped_image_byte_is_caught_by_default (``verify=False``, the
  cheap open, trusts the stored checksum); `train fit` here.
- truncated file: verify -> test_verify::test_truncated_shard_is_caught, CLI here; Dataset ->
  test_dataset::test_truncated_shard_is_refused_naming_the_file, and here when it happens after
  the Dataset was opened.
- shard from another recipe: verify (CLI) and Dataset here (test_dataset changes the manifest's
  recipe, not a shard's).
- missing shard: verify -> test_verify::test_missing_shard_and_manifest_are_caught, CLI here;
  Dataset here.
- manifest checksum differs: verify -> test_verify::test_manifest_that_disagrees_is_caught, CLI
  here; Dataset -> test_dataset::test_checksum_mismatch_is_refused_naming_the_shard.
- manifest track count differs: verify (CLI) and Dataset here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import shards
from tests._shardset import RECIPE, make_shard_set
from train.dataset import ShardDataset

COUNTS = {"train": [12, 10, 9], "validation": [8], "test": [6]}
VICTIM = "train-00001-of-00003.h5"


@pytest.fixture(scope="module")
def good_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good-set")
    make_shard_set(folder, COUNTS, num_classes=4, seed=5)
    return folder


@pytest.fixture
def bad_set(good_set, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(good_set, folder)
    return folder


def _edit_manifest(folder, key: str, change) -> None:
    """Change one field of VICTIM's manifest entry, keeping the manifest itself valid."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = next(e for e in manifest["shards"] if e["name"] == VICTIM)
    entry[key] = change(entry[key])
    path.write_text(json.dumps(manifest, indent=1))


def truncate(folder) -> str:
    path = folder / VICTIM
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size * 2 // 3)
    return "cannot be read as a shard|truncated"


def other_recipe(folder) -> str:
    """Rewrite VICTIM with the same data but another recipe (e.g. copied over from another shard set)."""
    path = folder / VICTIM
    old = shards.read_shard(path)
    mel = shards.mel_memmap(path)[()].copy()
    shards.write_shard(
        path,
        mel=mel,
        label=old.label,
        track_id=old.track_id,
        split=old.split,
        shard_index=old.shard_index,
        num_shards=old.num_shards,
        subset=old.subset,
        recipe={**RECIPE, "fmax": 8000},
        class_names=old.class_names,
    )
    return "recipe"


def missing(folder) -> str:
    (folder / VICTIM).unlink()
    return "missing"


def manifest_checksum(folder) -> str:
    _edit_manifest(folder, "checksum", lambda _: "sha256:" + "1" * 64)
    return "checksum"


def manifest_num_tracks(folder) -> str:
    _edit_manifest(folder, "num_tracks", lambda n: n + 1)
    return "tracks"


@pytest.mark.parametrize(
    "fault",
    [truncate, other_recipe, missing, manifest_checksum, manifest_num_tracks],
    ids=lambda f: f.__name__,
)
def test_verify_cli_exits_non_zero_naming_the_file(fault, bad_set, python, subprocess_env):
    what = fault(bad_set)
    result = subprocess.run(
        [python, "-m", "preprocess", "verify", str(bad_set), "--no-progress"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(VICTIM in line for line in errors), result.stderr
    assert any(re.search(what, line) for line in errors), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("fault", [other_recipe, missing, manifest_num_tracks], ids=lambda f: f.__name__)
def test_dataset_refuses_naming_the_file(fault, bad_set):
    what = fault(bad_set)
    with pytest.raises(shards.ShardError, match=rf"{VICTIM}.*({what})"):
        ShardDataset(bad_set, "train")
    ShardDataset(bad_set, "validation")  # the other splits are unaffected


def test_good_set_passes_both(good_set, python, subprocess_env):
    """The control: the same checks pass on the untouched set (so the failures above are the faults')."""
    result = subprocess.run(
        [python, "-m", "preprocess", "verify", str(good_set), "--no-progress"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(ShardDataset(good_set, "train", verify=True)) == sum(COUNTS["train"])


def test_shard_truncated_after_the_dataset_opened_is_named_on_read(bad_set):
    dataset = ShardDataset(bad_set, "train")
    start = dataset.shards[1].start
    truncate(bad_set)
    with pytest.raises(shards.ShardError, match=rf"{VICTIM}.*truncated"):
        dataset[np.array([start, start + 1])]


def test_train_fit_names_a_flipped_byte(bad_set, tmp_path, capsys):
    from train.__main__ import main

    path = bad_set / VICTIM
    layout = shards.data_layout(path, "mel")
    with open(path, "r+b") as fh:
        fh.seek(layout.offset + 4 * 128 * 128 * 3 + 4 * 77)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x10]))
    argv = [
        "fit",
        "--shards",
        str(bad_set),
        "--run",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--epochs",
        "1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and VICTIM in err and "checksum" in err, err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unreadable_manifest_is_named_by_verify_and_the_dataset(bad_set, python, subprocess_env):
    manifest = bad_set / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])  # cut short
    result = subprocess.run(
        [python, "-m", "preprocess", "verify", str(bad_set), "--no-progress"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and str(manifest) in result.stderr and "JSON" in result.stderr
    with pytest.raises(shards.ShardError, match=r"manifest\.json: not a readable JSON manifest"):
        ShardDataset(bad_set, "train")
