"""Top genres for audio files: ``python -m train predict --run RUN FILE.mp3 [...]``.

Features are computed with the exact recipe stored in the checkpoint, by the
features stage's own function ``preprocess.audio.mel_from_file`` (imported here
only, so that the rest of ``train`` never needs librosa).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from shards.cli import EXIT_FAILURES, EXIT_OK, add_logging_arguments, run_command
from train.checkpoint import BEST, load_checkpoint
from train.inference import load_model, resolve_device, score_batch
from train.normalization import standardize, to_device

log = logging.getLogger(__name__)


def predict_files(run_dir: str | os.PathLike, files: list[str | os.PathLike], *, device_name: str = "cpu",
                  checkpoint_name: str = BEST, checkpoint: dict | None = None,
                  ) -> list[tuple[Path, np.ndarray | None, str | None]]:
    """Class probabilities for each file.

    ``checkpoint`` (already loaded from ``run_dir/checkpoint_name``) saves reading it again.

    Returns
    -------
    list of (path, probabilities (K,) float32 or None, error message or None)
    """
    from preprocess.audio import mel_from_file  # lazy: librosa only where audio is decoded

    device = resolve_device(device_name)
    if checkpoint is None:
        checkpoint = load_checkpoint(Path(run_dir) / checkpoint_name)
    model = load_model(checkpoint, device)
    normalization = to_device(checkpoint["normalization"], device)
    results = []
    for file in files:
        path = Path(file)
        try:
            mel = np.asarray(mel_from_file(path, checkpoint["recipe"]), dtype=np.float32)
        except Exception as exc:  # any decoding failure is reported per file, never stops the others
            message = str(exc) or type(exc).__name__
            results.append((path, None, message if str(path) in message else f"{path}: {message}"))
            continue
        if mel.shape != (128, 128):
            results.append((path, None, f"{path}: features have shape {mel.shape}, expected (128, 128)"))
            continue
        x = standardize(torch.from_numpy(mel[None, None]).to(device), normalization)
        results.append((path, score_batch(model, x, device)[0].cpu().numpy(), None))
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (MP3 or anything the "
                        "features stage decodes)")
    parser.add_argument("--run", required=True, help="run folder holding best.pt")
    parser.add_argument("--checkpoint", default=BEST, help="checkpoint file name in the run folder "
                        "(default: best.pt)")
    parser.add_argument("--top", type=int, default=3, help="genres to print per file (default: 3)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cuda", "cpu"),
                        help="where the model runs (default: cpu)")
    add_logging_arguments(parser)


def main(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(Path(args.run) / args.checkpoint)
    names = checkpoint["class_names"]
    failures = 0
    for path, probabilities, error in predict_files(args.run, args.files, device_name=args.device,
                                                    checkpoint=checkpoint):
        if error is not None:
            log.error("cannot compute features: %s", error)
            failures += 1
            continue
        top = np.argsort(probabilities)[::-1][: max(1, args.top)]
        ranked = ", ".join(f"{names[i]} {probabilities[i]:.3f}" for i in top)
        print(f"{path}: {ranked}")
    if failures:
        log.warning("%d of %d files could not be read", failures, len(args.files))
    return EXIT_FAILURES if failures else EXIT_OK


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m train.predict", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run_command(main, _parser.parse_args()))
