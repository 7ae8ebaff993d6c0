"""Generated shard sets for the training-side tests (written with shards.write_shard).

Class c of K lights up mel bands [c * 128 // K, (c + 1) * 128 // K) by +12 dB over a
noisy -40 dB floor, so a short training run can learn it.

Multi-label sets (``multilabel=True``, as ``--target genres_all`` makes them): a genre table of
K top-level genres with two sub-genres each (G = 3K); each track carries a top genre with or
without one of its sub-genres, or (about one in five) two top genres and no label (-1); genre
column j of G lights mel bands [j * 128 // G, (j + 1) * 128 // G) instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import shards

RECIPE = {"name": "test-recipe", "n_mels": 128, "frames": 128}
FINE_RECIPE = {"name": "test-fine", "n_mels": 128, "n_frames": 300}


def band_images(
    labels: np.ndarray, num_classes: int, rng: np.random.Generator, frames: int = 128
) -> np.ndarray:
    """Images (N, 128, frames) float32 whose class is a band-energy pattern."""
    images = rng.normal(-40.0, 4.0, size=(len(labels), 128, frames)).astype(np.float32)
    band = 128 // num_classes
    for i, c in enumerate(labels):
        images[i, c * band : (c + 1) * band, :] += 12.0
    return images


def genre_table(num_classes: int) -> list[dict]:
    """K top-level genres (ids 1..K, titles ``genre00``..) with two sub-genres each (ids 100 + 2c + s,
    titles ``genre00-a``, ``genre00-b``), in column (id) order."""
    tops = [
        {"id": c + 1, "title": f"genre{c:02d}", "parent": 0, "top_level": c + 1} for c in range(num_classes)
    ]
    subs = [
        {"id": 100 + 2 * c + s, "title": f"genre{c:02d}-{'ab'[s]}", "parent": c + 1, "top_level": c + 1}
        for c in range(num_classes)
        for s in range(2)
    ]
    return tops + subs


def multi_hot_tracks(n: int, num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) (-1: two top genres, no label) and multi-hot rows (n, 3K) uint8 (:func:`genre_table`)."""
    g = 3 * num_classes
    label = rng.integers(0, num_classes, size=n)
    hot = np.zeros((n, g), dtype=np.uint8)
    for i in range(n):
        if rng.random() < 0.2:  # two top genres: no top-level label
            a, b = rng.choice(num_classes, 2, replace=False)
            hot[i, [a, b]] = 1
            label[i] = -1
            continue
        hot[i, label[i]] = 1
        sub = rng.integers(0, 3)  # none, a or b
        if sub:
            hot[i, num_classes + 2 * label[i] + sub - 1] = 1
    return label, hot


def genre_images(hot: np.ndarray, rng: np.random.Generator, frames: int = 128) -> np.ndarray:
    """Images (N, 128, frames) float32 where genre column j lights its own band."""
    n, g = hot.shape
    images = rng.normal(-40.0, 4.0, size=(n, 128, frames)).astype(np.float32)
    for j in range(g):
        images[hot[:, j] == 1, j * 128 // g : (j + 1) * 128 // g, :] += 12.0
    return images


def make_shard_set(
    folder: Path,
    counts: dict[str, list[int]],
    num_classes: int = 4,
    seed: int = 0,
    compression: str | None = None,
    label_noise: float = 0.0,
    fine: bool = False,
    multilabel: bool = False,
) -> dict:
    """Write a shard set: ``counts[split]`` = tracks per shard of that split, plus manifest.json.

    ``label_noise``: this fraction of the stored labels is replaced by a random class
    (the images keep their true pattern), so even a perfect model makes mistakes.
    ``fine``: also a ``mel_fine`` image (N, 128, 300) float16 of the same pattern (:data:`FINE_RECIPE`).
    ``multilabel``: a set as ``--target genres_all`` makes it (see the module doc).

    Returns
    -------
    dict: {"manifest": dict, "data": {split: (mel (N,128,128), label (N,), track_id (N,))}}
        and, with ``fine``, "fine": {split: (N, 128, 300) float16}
        (with ``multilabel``, each split's tuple ends with the genre rows (N, G) uint8)
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    class_names = [f"genre{c:02d}" for c in range(num_classes)]
    table = genre_table(num_classes) if multilabel else None
    entries, data, fine_data, next_id, totals = [], {}, {}, 1, {}
    about = {"mel_fine": {"recipe": FINE_RECIPE}} if fine else {}
    if multilabel:
        about["genres"] = {"genre_table": table}
    for split, per_shard in counts.items():
        mels, labels, ids, fines, genres = [], [], [], [], []
        for index, n in enumerate(per_shard):
            extras = {}
            if multilabel:
                label, hot = multi_hot_tracks(n, num_classes, rng)
                mel = genre_images(hot, rng)
                extras["genres"] = (hot, about["genres"])
                genres.append(hot)
            else:
                label = rng.integers(0, num_classes, size=n)
                mel = band_images(label, num_classes, rng)
            fine_mel = None
            if fine:  # drawn only then: shard sets without it stay as they were
                fine_mel = (
                    genre_images(hot, rng, FINE_RECIPE["n_frames"])
                    if multilabel
                    else band_images(label, num_classes, rng, FINE_RECIPE["n_frames"])
                ).astype(np.float16)
                extras["mel_fine"] = (fine_mel, about["mel_fine"])
            noisy = rng.random(n) < label_noise
            label = np.where(noisy, rng.integers(0, num_classes, size=n), label)
            track_id = np.arange(next_id, next_id + n, dtype=np.int64)
            next_id += n + 3
            name = shards.shard_name(split, index, len(per_shard))
            checksum = shards.write_shard(
                folder / name,
                mel=mel,
                label=label,
                track_id=track_id,
                split=split,
                shard_index=index,
                num_shards=len(per_shard),
                subset="large",
                recipe=RECIPE,
                class_names=class_names,
                compression=compression,
                extras=extras or None,
            )
            entries.append(
                {
                    "name": name,
                    "split": split,
                    "shard_index": index,
                    "num_shards": len(per_shard),
                    "num_tracks": n,
                    "num_failed": 0,
                    "checksum": checksum,
                    "class_counts": np.bincount(label[label >= 0], minlength=num_classes).tolist(),
                }
            )
            mels.append(mel)
            labels.append(label)
            ids.append(track_id)
            fines.append(fine_mel)
        data[split] = (np.concatenate(mels), np.concatenate(labels).astype(np.int64), np.concatenate(ids))
        if fine:
            fine_data[split] = np.concatenate(fines)
        if multilabel:
            data[split] += (np.concatenate(genres),)
        totals[split] = {"tracks": int(sum(per_shard))}
    manifest = {
        "format_version": shards.EXTRAS_FORMAT_VERSION if about else shards.FORMAT_VERSION,
        "subset": "large",
        "recipe": RECIPE,
        "class_names": class_names,
        "shard_size": max(max(v) for v in counts.values()),
        "shards": entries,
        "totals": totals,
        "skipped": {},
        "failed": [],
        "versions": {},
    }
    if about:
        manifest["extras"] = about
    shards.write_manifest(folder, manifest)
    return {"manifest": manifest, "data": data, **({"fine": fine_data} if fine else {})}


def fit_argv(shards_dir: Path, run: Path, *extra: str, batch_size: int = 16, seed: int = 3) -> list[str]:
    """``fit`` arguments for a small seed-model run on CPU (append ``extra`` flags)."""
    return [
        "fit",
        "--shards",
        str(shards_dir),
        "--run",
        str(run),
        "--model",
        "seed",
        "--device",
        "cpu",
        "--batch-size",
        str(batch_size),
        "--seed",
        str(seed),
        *extra,
    ]
