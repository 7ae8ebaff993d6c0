"""What the cluster tests share: a local reference run and a strict shard-set comparison."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import h5py
import numpy as np

from preprocess.verify import verify_shards
from shards import read_manifest, read_shard

# Small shards so the mini-FMA gives several array tasks / dask tasks.
SHARD_SIZE = 16
# Every cluster run (and the local run it is compared with) makes the fine image too, so the
# equality checks cover it on every backend and from the zip.
RECIPE_ARGS = ("--recipes", "reference,fine")


def features_argv(python: str, fma_dir: Path, out: Path, *more: str) -> list[str]:
    """``python -m preprocess features`` over the whole generated mini-FMA into ``out``."""
    return [
        python,
        "-m",
        "preprocess",
        "features",
        "--fma-dir",
        str(fma_dir),
        "--subset",
        "large",
        "--out",
        str(out),
        "--shard-size",
        str(SHARD_SIZE),
        *RECIPE_ARGS,
        "--no-progress",
        *more,
    ]


def features_run(python: str, fma_dir: Path, out: Path, env: dict, *more: str, timeout: float = 600):
    """Run :func:`features_argv`'s command to its end; the CompletedProcess (output captured as text)."""
    return subprocess.run(
        features_argv(python, fma_dir, out, *more),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_local(python: str, fma_dir: Path, out: Path, env: dict) -> Path:
    """The reference: a local run with the supervised process pool (2 workers), manifest included."""
    done = features_run(python, fma_dir, out, env, "--jobs", "2")
    assert done.returncode == 0, f"local features run failed:\n{done.stdout}\n{done.stderr}"
    assert (out / "manifest.json").exists()
    return out


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.h5"))


def _file_contents(path: Path) -> dict:
    """Every dataset (as an array) and every attribute of an HDF5 file, by name."""
    contents: dict = {}
    with h5py.File(path, "r") as f:
        contents["/"] = {k: _plain(v) for k, v in f.attrs.items()}

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                contents[name] = (obj[()], {k: _plain(v) for k, v in obj.attrs.items()})

        f.visititems(visit)
    return contents


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def assert_same_shard_set(expected: Path, actual: Path) -> None:
    """``actual`` holds the same shards as ``expected``, dataset by dataset and attribute by attribute,
    the same checksums, the same plan and manifest, and ``verify`` accepts it."""
    assert shard_names(actual) == shard_names(expected), "not the same shard files"
    assert shard_names(expected), f"no shards in {expected}"
    for name in shard_names(expected):
        a, b = read_shard(expected / name), read_shard(actual / name)
        assert b.checksum == a.checksum, f"{name}: checksum {b.checksum} != local run's {a.checksum}"
        assert np.array_equal(b.track_id, a.track_id) and np.array_equal(b.label, a.label), name
        assert b.failed == a.failed, name
        want, got = _file_contents(expected / name), _file_contents(actual / name)
        assert sorted(got) == sorted(want), f"{name}: datasets {sorted(got)} != {sorted(want)}"
        for key in want:
            if key == "/":
                assert got[key] == want[key], f"{name}: attributes differ"
            else:
                assert np.array_equal(got[key][0], want[key][0]), f"{name}: dataset {key} differs"
                assert got[key][1] == want[key][1], f"{name}: attributes of {key} differ"
    assert json.loads((actual / "plan.json").read_text()) == json.loads((expected / "plan.json").read_text())
    assert read_manifest(actual) == read_manifest(expected), "manifest differs from the local run's"
    assert verify_shards(actual) == [], f"verify found problems in {actual}"


def assert_same_shards_from_zip(expected: Path, actual: Path) -> None:
    """``actual`` (made from the zip) holds ``expected``'s shards (made from the tree): the same
    names, checksums, plan and failed tracks with the same reasons, but for a missing file, which
    a zip names as ``missing file: no member ... in <zip>``; and ``verify`` accepts it."""
    assert shard_names(actual) == shard_names(expected) and shard_names(expected)
    ours, theirs = read_manifest(actual), read_manifest(expected)
    assert [(e["name"], e["checksum"]) for e in ours["shards"]] == [
        (e["name"], e["checksum"]) for e in theirs["shards"]
    ]
    reasons = {f["track_id"]: f["reason"] for f in theirs["failed"]}
    named = "missing file: no member "
    assert {
        f["track_id"]: "missing file" if f["reason"].startswith(named) else f["reason"]
        for f in ours["failed"]
    } == reasons
    assert json.loads((actual / "plan.json").read_text()) == json.loads((expected / "plan.json").read_text())
    assert verify_shards(actual) == [], f"verify found problems in {actual}"
