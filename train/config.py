"""Training configuration: one dataclass, loaded from YAML, overridden from the command line.

Precedence (later wins): the dataclass defaults, a YAML file (``--config``), the
command-line flags that were given. The result is saved as ``RUN/config.yaml``
and inside every checkpoint, so a run can always be reproduced and resumed.

To add a setting, add a field with a default and a ``help`` in its metadata: the
command-line flag (``--field-name``) is generated from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shards import atomic_write_text
from shards.errors import FmaGenreError

MODEL_CHOICES = ("seed", "resnet", "shortchunk")
IMAGES = ("mel", "mel_fine")
OPTIMIZERS = ("sgd", "adamw")
# The training tasks (train/tasks.py) and the validation metrics each can pick best.pt by
# (the first is what select_metric "auto" means).
TASKS = ("single", "multilabel")
SELECT_METRICS = {"single": ("macro_f1", "accuracy"), "multilabel": ("macro_map", "micro_map", "macro_auc")}
METRICS = ("auto", *SELECT_METRICS["single"], *SELECT_METRICS["multilabel"])
PRELOAD = ("none", "ram", "gpu")
DEVICES = ("auto", "cuda", "cpu")
CLASS_WEIGHTS = ("none", "balanced")
NORMS = ("batch", "group")
SAMPLING = ("shuffle", "balanced")


class ConfigError(FmaGenreError, ValueError):
    """A setting is unknown or out of range, or settings and inputs do not fit together
    (a run folder that exists without ``--resume``, shards of another class list
    than the checkpoint's, ``--device cuda`` without a GPU). The message names the
    setting or file and what to change. (Also a ``ValueError``, as before.)"""


def _f(default, help: str, choices=None):
    """A dataclass field carrying its command-line help (and choices)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    """Everything that decides a training run (plain data: str, int, float, bool, list)."""

    shards: str = _f("", "shard set folder (holds manifest.json)")
    run: str = _f("", "run folder: checkpoints, config.yaml, TensorBoard events, test report")
    task: str = _f(
        "single",
        "single: one of the top-level genres per track (softmax, cross-entropy); multilabel: every "
        "genre of FMA's taxonomy a track carries (sigmoid per genre, binary cross-entropy; shards made "
        "with --target genres_all)",
        TASKS,
    )
    min_genre_tracks: int = _f(
        5,
        "multilabel: genres with fewer training tracks than this are left out of the model's outputs "
        "(listed when training starts, in the checkpoint and in the test report)",
    )
    model: str = _f("seed", "model name", MODEL_CHOICES)
    image: str = _f(
        "mel",
        "the image the model reads: mel (128 x 128 over 29.5 s, the reference) or mel_fine (128 x 1271, "
        "23 ms frames; shard sets made with RECIPES=reference,fine)",
        IMAGES,
    )
    crop_frames: int = _f(
        128,
        "train on random crops of this many frames of each image (a new crop every epoch) and score a "
        "clip as the mean of its chunks' probabilities; 128 frames are the whole mel image, or 2.97 s "
        "of mel_fine",
    )
    norm: str = _f(
        "batch",
        "normalisation layers: batch (BatchNorm, the reference) or group (GroupNorm: "
        "independent of how the batch is split across ranks)",
        NORMS,
    )
    width: int = _f(0, "channels of the first layer of resnet / shortchunk (0: the model's default)")
    dropout: float = _f(
        -1.0, "dropout before the last layer of resnet / shortchunk (-1: the model's default)"
    )
    freq_pools: int = _f(
        7,
        "shortchunk: how many of its 7 blocks pool frequency (fewer keep where in the spectrum a pattern is)",
    )
    members: int = _f(
        1,
        "train this many copies of the model side by side, each from its own initial weights and "
        "with its own loss on the same batches, and score with the mean of their logits (an "
        "ensemble in one model file; each epoch costs this many times one model's)",
    )
    epochs: int = _f(20, "number of epochs")
    batch_size: int = _f(32, "samples per batch")
    optimizer: str = _f("sgd", "sgd (momentum, the reference recipe) or adamw", OPTIMIZERS)
    lr: float = _f(0.01, "peak learning rate (after warm-up)")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(5e-4, "weight decay (L2 for SGD, decoupled for AdamW)")
    warmup_epochs: float = _f(1.0, "linear warm-up length in epochs (0 disables)")
    milestones: list = _f(
        [], "epochs at which the learning rate is multiplied by gamma (empty: at 50%% and 75%% of the epochs)"
    )
    gamma: float = _f(0.1, "learning-rate decay factor at each milestone")
    class_weights: str = _f(
        "none",
        "cross-entropy class weights: none, or balanced (inverse training-split frequency; task single)",
        CLASS_WEIGHTS,
    )
    select_metric: str = _f(
        "auto",
        "validation metric that picks best.pt (auto: macro_f1 for task single, macro_map, the mean "
        "average precision over genres, for multilabel)",
        METRICS,
    )
    validate_every: int = _f(
        1, "validate (and consider for best.pt) every this many epochs, and after the last one"
    )
    normalize: bool = _f(True, "standardise each mel band with training-split mean/std")
    preload: str = _f("none", "copy the split into memory first: none, ram or gpu", PRELOAD)
    num_workers: int = _f(-1, "DataLoader worker processes (-1: 0 on CPU or small machines, else 4)")
    device: str = _f("auto", "auto (CUDA when available), cuda or cpu", DEVICES)
    verify_shards: bool = _f(
        True,
        "recompute every shard's checksum when opening a split (reads every "
        "image once; --no-verify-shards checks only the cheap things)",
    )
    seed: int = _f(0, "random seed (weights, shuffling, dropout)")
    dist_timeout: float = _f(
        300.0,
        "under torchrun: seconds a collective may wait for the other ranks "
        "before the job stops with an error (a hung or lost rank)",
    )
    max_steps_per_epoch: int = _f(0, "stop each epoch after this many batches (0: whole split; for tests)")
    # Learning options (train/augment.py, train/sampling.py, train/ema.py); all off by default.
    sampling: str = _f(
        "shuffle",
        "shuffle (a seeded permutation per epoch) or balanced (every class "
        "drawn equally often per epoch; small classes repeat)",
        SAMPLING,
    )
    label_smoothing: float = _f(0.0, "cross-entropy label smoothing, 0 <= e < 1 (0: off)")
    ema_decay: float = _f(
        0.0,
        "exponential moving average of the weights, 0 < d < 1, used for validation, "
        "best.pt, test, predict and export (0: off)",
    )
    freq_masks: int = _f(0, "SpecAugment frequency masks per training image (0: off)")
    freq_mask_width: int = _f(16, "widest frequency mask, in mel bands (each width is drawn from 0..this)")
    time_masks: int = _f(0, "SpecAugment time masks per training image (0: off)")
    time_mask_width: int = _f(16, "widest time mask, in frames")
    time_shift: float = _f(
        0.0,
        "random circular shift of each training image along time, up to this "
        "fraction of its width (0: off, 1: any shift)",
    )
    mixup_alpha: float = _f(
        0.0,
        "mixup: mix each training batch with a shuffled copy of itself, weight ~ Beta(alpha, alpha) (0: off)",
    )

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the setting if a value is out of range."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"config {f.name}={value!r}: must be one of {choices}")
        for name in ("epochs", "batch_size", "crop_frames", "validate_every", "members"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config {name}={getattr(self, name)}: must be >= 1")
        if (self.width or self.dropout >= 0) and self.model == "seed":
            raise ConfigError("config width / dropout: the seed model has neither (it is the reference's)")
        if (self.freq_pools != 7 and self.model != "shortchunk") or not 0 <= self.freq_pools <= 7:
            raise ConfigError(f"config freq_pools={self.freq_pools}: a shortchunk option, 0..7")
        if self.width < 0 or self.dropout >= 1:
            raise ConfigError(f"config: need width >= 0 and dropout < 1, got {self.width}, {self.dropout}")
        if self.dist_timeout <= 0:
            raise ConfigError(f"config dist_timeout={self.dist_timeout}: must be > 0 seconds")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or not 0 < self.gamma <= 1:
            raise ConfigError(
                f"config: need lr > 0, weight_decay >= 0, warmup_epochs >= 0, "
                f"0 < gamma <= 1; got lr={self.lr}, weight_decay={self.weight_decay}, "
                f"warmup_epochs={self.warmup_epochs}, gamma={self.gamma}"
            )
        if any(int(m) != m or m < 1 for m in self.milestones):
            raise ConfigError(f"config milestones={self.milestones}: must be positive whole epochs")
        if self.select_metric != "auto" and self.select_metric not in SELECT_METRICS[self.task]:
            raise ConfigError(
                f"config select_metric={self.select_metric!r}: task {self.task} is scored by "
                f"{', '.join(SELECT_METRICS[self.task])} (or auto)"
            )
        if self.task == "multilabel" and self.class_weights != "none":
            raise ConfigError(
                "config class_weights=balanced: class weights are for task single; for multilabel, "
                "genres too rare to learn are left out with min_genre_tracks (or use sampling: balanced)"
            )
        if self.min_genre_tracks < 1:
            raise ConfigError(f"config min_genre_tracks={self.min_genre_tracks}: must be >= 1")
        if not 0.0 <= self.label_smoothing < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(
                f"config: need 0 <= label_smoothing < 1 and 0 <= ema_decay < 1; got "
                f"label_smoothing={self.label_smoothing}, ema_decay={self.ema_decay}"
            )
        try:
            self.augment_settings()
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from exc

    def model_options(self) -> dict:
        """Keyword options of the model (:class:`train.models.ModelConfig`): only those set."""
        options = {} if self.norm == "batch" else {"norm": self.norm}
        if self.width:
            options["width"] = self.width
        if self.dropout >= 0:
            options["dropout"] = self.dropout
        if self.freq_pools != 7:
            options["freq_pools"] = self.freq_pools
        if self.members > 1:
            options["members"] = self.members
        return options

    def augment_settings(self):
        """The augmentation settings (:class:`train.augment.AugmentSettings`); ValueError naming a bad one."""
        from train.augment import AugmentSettings

        return AugmentSettings(
            self.freq_masks,
            self.freq_mask_width,
            self.time_masks,
            self.time_mask_width,
            self.time_shift,
            self.mixup_alpha,
        )

    def resolved_select_metric(self) -> str:
        """The validation metric that picks best.pt (``auto`` resolved for the task)."""
        return SELECT_METRICS[self.task][0] if self.select_metric == "auto" else self.select_metric

    def resolved_milestones(self) -> list[int]:
        """The milestones, defaulting to 50% and 75% of the epochs."""
        if self.milestones:
            return sorted(int(m) for m in self.milestones)
        return sorted({max(1, round(self.epochs * 0.5)), max(1, round(self.epochs * 0.75))})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def config_from_dict(values: dict, base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
    """A copy of ``base`` (default: the defaults) with ``values`` applied and type-checked."""
    base = base or TrainConfig()
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown settings {unknown}; known: {sorted(known)}")
    updates = {}
    for name, value in values.items():
        default = getattr(TrainConfig(), name)
        try:
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise TypeError("expected true or false")
            elif isinstance(default, list):
                value = [int(v) for v in (value or [])]
            elif isinstance(default, (int, float)):
                value = type(default)(value)
            else:
                value = str(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: setting {name}={value!r}: {exc}") from exc
        updates[name] = value
    config = dataclasses.replace(base, **updates)
    config.validate()
    return config


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping of settings (``yaml.safe_load``)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the YAML config ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping of setting: value")
    return data


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per config field; every default is None (= not given)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default!r})"
        kwargs = {"default": None, "help": help_text, "dest": f.name}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, list):
            kwargs.update(nargs="*", type=int, metavar="EPOCH")
        else:
            kwargs.update(type=type(default))
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The config settings given on the command line (those not None)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def save_config(config: TrainConfig, run_dir: str | os.PathLike) -> Path:
    """Write ``run_dir/config.yaml`` atomically."""
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(
        path, "# training configuration (defaults < --config file < command line)\n" + config.to_yaml()
    )
    return path
