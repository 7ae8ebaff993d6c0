"""Generated shard sets for the training-side tests (written with shards.write_shard).

Class c of K lights up mel bands [c * 128 // K, (c + 1) * 128 // K) by +12 dB over a
noisy -40 dB floor, so a short training run can learn it.
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


def make_shard_set(
    folder: Path,
    counts: dict[str, list[int]],
    num_classes: int = 4,
    seed: int = 0,
    compression: str | None = None,
    label_noise: float = 0.0,
    fine: bool = False,
) -> dict:
    """Write a shard set: ``counts[split]`` = tracks per shard of that split, plus manifest.json.

    ``label_noise``: this fraction of the stored labels is replaced by a random class
    (the images keep their true pattern), so even a perfect model makes mistakes.
    ``fine``: also a ``mel_fine`` image (N, 128, 300) float16 of the same pattern (:data:`FINE_RECIPE`).

    Returns
    -------
    dict: {"manifest": dict, "data": {split: (mel (N,128,128), label (N,), track_id (N,))}}
        and, with ``fine``, "fine": {split: (N, 128, 300) float16}
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    class_names = [f"genre{c:02d}" for c in range(num_classes)]
    entries, data, fine_data, next_id, totals = [], {}, {}, 1, {}
    extras = {"mel_fine": {"recipe": FINE_RECIPE}} if fine else {}
    for split, per_shard in counts.items():
        mels, labels, ids, fines = [], [], [], []
        for index, n in enumerate(per_shard):
            label = rng.integers(0, num_classes, size=n)
            mel = band_images(label, num_classes, rng)
            fine_mel = None
            if fine:  # drawn only then: shard sets without it stay as they were
                fine_mel = band_images(label, num_classes, rng, FINE_RECIPE["n_frames"]).astype(np.float16)
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
                extras={"mel_fine": (fine_mel, extras["mel_fine"])} if fine else None,
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
                    "class_counts": np.bincount(label, minlength=num_classes).tolist(),
                }
            )
            mels.append(mel)
            labels.append(label)
            ids.append(track_id)
            fines.append(fine_mel)
        data[split] = (np.concatenate(mels), np.concatenate(labels).astype(np.int64), np.concatenate(ids))
        if fine:
            fine_data[split] = np.concatenate(fines)
        totals[split] = {"tracks": int(sum(per_shard))}
    manifest = {
        "format_version": shards.EXTRAS_FORMAT_VERSION if fine else shards.FORMAT_VERSION,
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
    if fine:
        manifest["extras"] = extras
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
