"""Penultimate-layer embeddings: ``python -m train embed --run RUN (--shards S | FILES) --out emb.h5``.

For the retrieval and clustering work people do with genre models: every
track's vector from the layer before the logits (192 numbers for ``seed``, 512
for ``resnet``, 4 x width for ``shortchunk``; ``train.models``). A chunk model's
vector for an image is the mean over its chunks, as it scores them.

``--shards S [--split test]``  the stored images of one split (the model's own:
                               ``mel``, or ``mel_fine`` for a model of the fine
                               image), with each track's ``track_id`` and ``label``;
``FILES/FOLDERS``              audio files cut into windows exactly as ``predict``
                               does; a file's vector is the mean over its windows,
                               and files that fail are listed with their reasons.

The HDF5 layout is in :mod:`train.outputs`; the file is written atomically.

Examples:
  python -m train embed --run runs/seed --shards shards/fma_large --split test --out test-emb.h5
  python -m train embed --run runs/seed music/ --out music-emb.h5 --jobs 4
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from shards.cli import EXIT_FAILURES, EXIT_OK
from train.outputs import write_embeddings
from train.predict import (
    PredictError,
    add_model_arguments,
    find_audio_files,
    load_scorer,
    options_from_args,
    predict_tracks,
    with_default_hop,
)
from train.scorers import Scorer

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="*", metavar="FILE_OR_FOLDER", help="audio files and folders (instead of --shards)"
    )
    parser.add_argument("--shards", help="a shard set: embed the stored images of --split")
    parser.add_argument(
        "--split",
        default="test",
        choices=("train", "validation", "test"),
        help="split of --shards (default: test)",
    )
    parser.add_argument("--out", required=True, metavar="FILE.h5", help="the HDF5 file to write")
    add_model_arguments(parser)


def embed_shards(scorer: Scorer, shards_dir: str, split: str, batch_size: int = 256) -> dict:
    """Embeddings of every stored image of one split, in dataset order.

    The images are the model's own (``scorer.image``: ``mel``, or ``mel_fine`` for a model of
    the fine image), scored as the model scores them (a chunk model: means over the chunks).

    Returns
    -------
    dict with ``embedding`` (N, D) float32, ``track_id`` (N,) and ``label`` (N,) int64.
    """
    from tqdm import tqdm

    from shards.cli import progress_disabled
    from train.dataset import ShardDataset

    dataset = ShardDataset(shards_dir, split, image=scorer.image)
    if list(dataset.class_names) != list(scorer.task.class_names):
        raise PredictError(
            f"{shards_dir}: its class names differ from the model's; embed the shard "
            f"set the model was trained on"
        )
    expected = (int(scorer.recipe.get("n_mels", 128)), int(scorer.recipe.get("n_frames", 128)))
    if (dataset.height, dataset.width) != expected:
        raise PredictError(
            f"{shards_dir}: its {scorer.image} images are {dataset.height} x {dataset.width}, the model "
            f"reads {expected[0]} x {expected[1]}; embed the shard set the model was trained on"
        )
    chunks = []
    for start in tqdm(
        range(0, len(dataset), batch_size),
        desc=f"embed {split}",
        unit="batch",
        disable=progress_disabled(),
        leave=False,
        mininterval=1,
    ):
        x, _ = dataset.gather(np.arange(start, min(start + batch_size, len(dataset))))
        chunks.append(scorer(x.numpy()[:, 0])[1])
    dim = chunks[0].shape[1] if chunks else 0
    return {
        "embedding": np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32),
        "track_id": np.asarray(dataset.track_ids, np.int64),
        "label": np.asarray(dataset.labels, np.int64),
    }


def main(args: argparse.Namespace) -> int:
    """The ``embed`` command; exit status 1 if any file failed."""
    if bool(args.shards) == bool(args.inputs):
        raise PredictError("give either --shards S (a shard set) or audio FILES/FOLDERS, not both or neither")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise PredictError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    options = options_from_args(args)
    files = None if args.shards else find_audio_files(args.inputs)
    scorer = load_scorer(args)
    attrs = {"class_names": scorer.task.class_names, "recipe": scorer.recipe, "model": scorer.description}
    if args.shards:
        data = embed_shards(scorer, args.shards, args.split, batch_size=max(options.batch_size, 64))
        attrs["source"] = {"shards": str(args.shards), "split": args.split}
        write_embeddings(out, data["embedding"], attrs=attrs, track_id=data["track_id"], label=data["label"])
        print(
            f"{out}: {len(data['track_id'])} tracks of {args.shards} {args.split}, "
            f"{data['embedding'].shape[1]} dimensions"
        )
        return EXIT_OK
    done, failed = [], []
    for result in predict_tracks(files, scorer, options):
        if result.error is not None:
            log.error("%s: %s", result.path, result.error)
            failed.append((result.path, result.error))
        else:
            done.append(result)
    dim = done[0].embedding.shape[0] if done else 0
    embedding = np.stack([r.embedding for r in done]) if done else np.zeros((0, dim), np.float32)
    attrs["source"] = {
        "files": [str(i) for i in args.inputs],
        "hop_s": with_default_hop(options, scorer).hop_s,
        "first_window": options.first_only,
    }
    write_embeddings(
        out,
        embedding,
        attrs=attrs,
        paths=[r.path for r in done],
        windows=np.array([r.windows for r in done], np.int64),
        failed=failed,
    )
    print(f"{out}: {len(done)} files, {len(failed)} failed, {dim} dimensions")
    return EXIT_FAILURES if failed else EXIT_OK
