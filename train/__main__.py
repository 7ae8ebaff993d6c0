"""fma-genre training side: train a CNN on a shard set, evaluate it, predict genres.

Commands:
  fit      train MODEL on SHARDS/train, validate on SHARDS/validation every epoch;
           writes RUN/best.pt (best validation metric), RUN/last.pt (every epoch),
           RUN/config.yaml, RUN/history.json and TensorBoard events in RUN/tensorboard
  test     evaluate RUN/best.pt on SHARDS/test: prints a table, writes
           RUN/test_report.json and RUN/confusion.png
  predict  top genres with probabilities for audio files, using the recipe and
           normalisation stored in the checkpoint
  embed    penultimate-layer vectors of a shard split's tracks or of audio files,
           written to an HDF5 file
  export   write the model as ONNX (normalisation folded in, class names and recipe
           in its metadata)

Every command takes -q/--quiet (warnings, errors and results only, no progress
bars) and -v/--verbose. Exit status: 0 done, 1 some input files failed
(predict), 2 bad input, data or settings (one line "error: ..."), 130
interrupted (fit: add --resume to the same command to continue).

Examples:
  python -m train fit --shards shards/fma_large --run runs/seed --model seed --epochs 20
  python -m train fit --config train/configs/reference.yaml --shards S --run R --lr 0.02
  python -m train fit --run runs/seed --resume --epochs 30     # continue / extend a run
  python -m train test --shards shards/fma_large --run runs/seed
  python -m train predict --run runs/seed song.mp3
  python -m train predict --run runs/seed music/ --output results.csv
  python -m train embed --run runs/seed --shards shards/fma_large --split test --out emb.h5
  python -m train export --run runs/seed --onnx model.onnx
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from shards.cli import add_logging_arguments, run_command
from train.config import ConfigError
from train.memory import keep_freed_memory
from train.threads import add_threads_argument, apply_threads


def _fit_parser(sub) -> None:
    from train.config import add_config_arguments

    p = sub.add_parser(
        "fit",
        help="train a model",
        description=(
            "Train a model on a shard set. Settings come from the defaults, then --config FILE.yaml, then "
            "the flags given here; the result is saved as RUN/config.yaml. With --resume the run's saved "
            "configuration is the base and only the flags given here change it (e.g. --epochs to extend)."
        ),
    )
    p.add_argument(
        "--config",
        help="YAML file of settings (keys as the flags below, with underscores); see train/configs/",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN from RUN/last.pt (weights, optimiser, epoch, RNG state)",
    )
    add_config_arguments(p)
    add_threads_argument(p)
    add_logging_arguments(p)


def _test_parser(sub) -> None:
    p = sub.add_parser(
        "test",
        help="evaluate the best checkpoint on the test split",
        description=(
            "Evaluate RUN/best.pt on the test split of SHARDS: prints per-class precision/recall/F1 and "
            "accuracy, balanced accuracy, macro-F1, top-3 accuracy; writes RUN/test_report.json and "
            "RUN/confusion.png (row-normalised)."
        ),
    )
    p.add_argument("--shards", required=True, help="shard set folder (holds manifest.json)")
    p.add_argument("--run", required=True, help="run folder holding the checkpoint")
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cuda", "cpu"),
        help="auto: CUDA when available (default)",
    )
    p.add_argument("--checkpoint", default="best.pt", help="checkpoint in RUN (default: best.pt)")
    p.add_argument(
        "--split",
        default="test",
        choices=("train", "validation", "test"),
        help="split to evaluate (default: test)",
    )
    add_threads_argument(p)
    add_logging_arguments(p)


def _module_parser(sub, name: str, help_text: str) -> None:
    """A subcommand whose module (``train.<name>``) documents itself and adds its own arguments."""
    module = importlib.import_module(f"train.{name}")
    p = sub.add_parser(
        name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    module.add_arguments(p)


def _export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write the model as ONNX",
        description=(
            "Write RUN's checkpoint as an ONNX model: input `mel` (batch, 1, 128, 128) raw log-mel dB, "
            "outputs `logits` and `embedding`, a dynamic batch axis, the normalisation folded in and the "
            "class names and recipe in the model's metadata. Needs the onnx extra."
        ),
    )
    p.add_argument("--run", required=True, help="run folder holding the checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--checkpoint", default="best.pt", help="checkpoint in RUN (default: best.pt)")
    add_logging_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fit,test,predict,embed,export}")
    _fit_parser(sub)
    _test_parser(sub)
    _module_parser(sub, "predict", "top genres for audio files")
    _module_parser(sub, "embed", "penultimate-layer vectors to an HDF5 file")
    _export_parser(sub)
    return parser


def run_fit(args: argparse.Namespace) -> int:
    from train.checkpoint import LAST, load_checkpoint
    from train.config import config_from_dict, load_yaml, overrides_from_args
    from train.loop import fit

    overrides = overrides_from_args(args)
    if args.resume:
        if not args.run:
            raise ConfigError("--resume needs --run RUN (the run folder to continue)")
        saved = load_checkpoint(Path(args.run) / LAST)["config"]
        config = config_from_dict(saved, source=f"{Path(args.run) / LAST} config")
    else:
        config = None
    if args.config:
        config = config_from_dict(load_yaml(args.config), base=config, source=args.config)
    config = config_from_dict(overrides, base=config, source="command line")
    apply_threads(args.threads)
    fit(config, resume=args.resume)
    return 0


def run_test(args: argparse.Namespace) -> int:
    from train.evaluate import test

    apply_threads(args.threads)
    test(args.shards, args.run, args.device, checkpoint_name=args.checkpoint, split=args.split)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from train import predict

    return predict.main(args)


def run_embed(args: argparse.Namespace) -> int:
    from train import embed

    return embed.main(args)


def run_export_command(args: argparse.Namespace) -> int:
    from train.export import run_export

    run_export(args.run, args.onnx, args.checkpoint)
    return 0


COMMANDS = {
    "fit": run_fit,
    "test": run_test,
    "predict": run_predict,
    "embed": run_embed,
    "export": run_export_command,
}


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; the exit status (see the module doc)."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # training and scoring steps reuse their large buffers (train/memory.py)
    return run_command(COMMANDS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
