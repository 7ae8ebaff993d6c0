"""The training driver: data, model, optimiser, epochs, validation, checkpoints, logs.

Shape: :func:`fit` = :func:`start_run` (everything built before the first epoch,
gathered in a :class:`TrainingRun`) + one :func:`run_epoch` per epoch (train,
validate, checkpoint, log). Everything stateful lives here (I/O, the progress
bar, TensorBoard); the pieces it calls (sampling, metrics, the learning-rate
schedule) are pure functions, and running the model on a device is
:mod:`train.inference`'s.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shards import atomic_write_text
from shards.cli import progress_disabled
from train import distributed
from train.augment import augment_batch, batch_seed
from train.checkpoint import BEST, LAST, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from train.config import ConfigError, TrainConfig, save_config
from train.dataset import ShardDataset
from train.distributed import World
from train.ema import WeightEMA
from train.inference import (
    BatchSource,
    autocast,
    model_num_classes,
    place_model,
    predict_scores,
    prepare_input,
    resolve_device,
    resolve_workers,
)
from train.models import ModelConfig, build_model, count_parameters, per_member
from train.normalization import band_statistics
from train.sampling import EpochBatchSampler, IndexBatchSampler, RankBatchSampler, rank_range
from train.tasks import DATASET_TARGETS, Task, build_task, task_from_checkpoint

log = logging.getLogger(__name__)


def learning_rate(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of one optimiser step (pure function).

    Linear warm-up from ~0 to ``config.lr`` over ``warmup_epochs``, then ``lr``
    times ``gamma`` for every milestone epoch already reached.
    """
    progress = epoch + (step + 1) / max(steps_per_epoch, 1)
    if config.warmup_epochs > 0 and progress <= config.warmup_epochs:
        return config.lr * progress / config.warmup_epochs
    decays = sum(1 for m in config.resolved_milestones() if epoch >= m)
    return config.lr * config.gamma**decays


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with momentum (the reference recipe) or AdamW, at ``config.lr``."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


@dataclass
class TrainingRun:
    """Everything :func:`fit` builds before the first epoch, and the state that epochs advance."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    model_config: ModelConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: object  # the task's loss: (logits, targets) -> loss (train.tasks.Task.criterion)
    task: Task
    train_source: BatchSource
    val_source: BatchSource
    class_names: list[str]
    recipe: dict
    normalization: dict | None
    world: World = field(default_factory=World)
    ema: WeightEMA | None = None
    start_epoch: int = 0
    best: float = -1.0
    history: list[dict] = field(default_factory=list)

    @property
    def select_metric(self) -> str:
        """The validation metric that picks best.pt (``auto`` resolved for the task)."""
        return self.task.select_metric(self.config.select_metric)

    def checkpoint_state(self, epoch: int, rank_rng: list[dict]) -> dict:
        """The checkpoint after ``epoch`` (0-based) completed (format: :mod:`train.checkpoint`).

        ``rank_rng``: every rank's RNG state, in rank order (``[rng_state()]`` in one process).
        """
        plain = distributed.unwrap(self.model)
        return {
            "model": self.model_config.to_dict(),
            "state_dict": {k: v.detach().cpu() for k, v in plain.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch + 1,
            "best_metric": float(self.best),
            "metric_name": self.select_metric,
            "history": self.history,
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "task": self.task.to_dict(),
            "recipe": self.recipe,
            "normalization": self.normalization,
            "rng": rank_rng[0],
            "rank_rng": rank_rng,
            "ema_state_dict": None if self.ema is None else self.ema.state_dict(),
        }

    @property
    def eval_model(self) -> nn.Module:
        """The plain model validation scores: the weight average when EMA is on, else the trained one."""
        return distributed.unwrap(self.model) if self.ema is None else self.ema.model


def fit(config: TrainConfig, resume: bool = False) -> dict:
    """Train ``config.model`` on the shard set; write checkpoints and logs to ``config.run``.

    Under ``torchrun`` every rank runs this: together they train one DistributedDataParallel
    model, each on its part of every global batch of ``config.batch_size``
    (:mod:`train.distributed`); rank 0 alone writes.

    Returns
    -------
    dict
        The last epoch's history entry (losses, metrics, timing).
    """
    world = distributed.world_from_env()
    if config.batch_size % world.size:
        raise ConfigError(
            f"--batch-size {config.batch_size} (the global batch) must be a multiple of "
            f"the {world.size} ranks, so that each rank trains on an equal part of it"
        )
    device = distributed.device_for(world, resolve_device(config.device))
    distributed.init(world, device, config.dist_timeout)
    distributed.quiet_other_ranks(world)
    try:
        with distributed.collective_errors(world, config.dist_timeout):
            last = _fit(start_run(config, resume, world, device))
            distributed.shutdown(finished=True)
            return last
    finally:
        distributed.shutdown()


def _fit(run: TrainingRun) -> dict:
    from tensorboardX import SummaryWriter  # lazy: heavy, and only fit writes events

    config = run.config
    if run.start_epoch >= config.epochs:
        log.info(
            "%s: already trained for %d epochs (--epochs %d); nothing to do",
            run.run_dir,
            run.start_epoch,
            config.epochs,
        )
        return run.history[-1] if run.history else {}
    writer = SummaryWriter(logdir=str(run.run_dir / "tensorboard")) if run.world.main else None
    try:
        for epoch in range(run.start_epoch, config.epochs):
            run_epoch(run, epoch, writer)
    except KeyboardInterrupt:
        _log_interrupted(run)
        raise
    finally:
        if writer is not None:
            writer.close()
    if run.world.main:
        print(
            f"checkpoints: {run.run_dir / BEST} (best val {run.select_metric} {run.best:.4f}), "
            f"{run.run_dir / LAST}"
        )
    return run.history[-1]


def _log_interrupted(run: TrainingRun) -> None:
    done = len(run.history)
    if done:
        log.warning(
            "interrupted in epoch %d/%d; %s holds epoch %d: add --resume to the same command "
            "to continue from there",
            done + 1,
            run.config.epochs,
            run.run_dir / LAST,
            done,
        )
    else:
        log.warning(
            "interrupted in epoch 1/%d, before any checkpoint; rerun the same command to start again",
            run.config.epochs,
        )


def _check_run_folder(config: TrainConfig, resume: bool) -> dict | None:
    """The checkpoint to resume from (None for a new run); refuse to overwrite a run."""
    config.validate()
    if not config.shards or not config.run:
        raise ConfigError("both --shards and --run are required")
    run_dir = Path(config.run)
    if resume:
        return load_checkpoint(run_dir / LAST)
    if (run_dir / LAST).exists():
        raise ConfigError(
            f"{run_dir / LAST} exists: pass --resume to continue that run, or choose another --run folder"
        )
    return None


def _open_splits(config: TrainConfig, checkpoint: dict | None) -> tuple[ShardDataset, ShardDataset]:
    """The train split (read as crops when ``crop_frames`` is shorter than its images) and the
    validation split (whole images, scored by their chunks), handing out the task's targets."""
    target = DATASET_TARGETS[config.task]
    train_set = ShardDataset(
        config.shards, "train", verify=config.verify_shards, image=config.image, target=target
    )
    if config.crop_frames > train_set.width:
        raise ConfigError(
            f"crop_frames={config.crop_frames}: longer than the {config.image} images of {config.shards} "
            f"({train_set.width} frames)"
        )
    if config.crop_frames < train_set.width:
        train_set.crop_frames = config.crop_frames
    val_set = ShardDataset(
        config.shards, "validation", verify=config.verify_shards, image=config.image, target=target
    )
    if len(train_set) == 0:
        raise ConfigError(f"{config.shards}: the train split is empty")
    if checkpoint is not None and checkpoint["class_names"] != train_set.class_names:
        raise ConfigError(
            f"{config.shards}: class names differ from the checkpoint's; resume with "
            f"the shard set the run was started on"
        )
    return train_set, val_set


def _task(
    config: TrainConfig, checkpoint: dict | None, train_set: ShardDataset, val_set: ShardDataset
) -> Task:
    """The run's task: the checkpoint's when resuming (the same outputs), else made from the train split."""
    if checkpoint is not None:
        task = task_from_checkpoint(checkpoint)
        if task.name != config.task:
            raise ConfigError(f"--task {config.task}: the run was started with task {task.name}")
    else:
        task = build_task(config.task, train_set.class_names, train_set, config.min_genre_tracks)
    task.check_dataset(train_set)
    task.check_dataset(val_set)
    dropped = getattr(task, "dropped", [])
    if dropped:
        log.info(
            "multilabel: %d genres as outputs; %d with fewer than %d training tracks left out: %s",
            task.num_outputs,
            len(dropped),
            config.min_genre_tracks,
            ", ".join(f"{d['title']} ({d['train_tracks']})" for d in dropped),
        )
    return task


def _batch_sources(
    config: TrainConfig,
    train_set: ShardDataset,
    val_set: ShardDataset,
    device: torch.device,
    normalization: dict | None,
    world: World,
    task: Task,
) -> tuple[BatchSource, BatchSource, int]:
    """This rank's part of every global training batch, and its contiguous part of the validation split."""
    workers = resolve_workers(config.num_workers, device, config.preload)
    balance = task.balance_groups(train_set) if config.sampling == "balanced" else None
    global_batches = EpochBatchSampler(
        len(train_set),
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        drop_last=len(train_set) > config.batch_size,
        max_batches=config.max_steps_per_epoch,
        balance_labels=balance,
        crop=None if train_set.crop_frames is None else (train_set.width, train_set.crop_frames),
    )
    train_sampler = RankBatchSampler(global_batches, world.rank, world.size)
    val_part = np.arange(*rank_range(len(val_set), world.rank, world.size))
    val_sampler = IndexBatchSampler(val_part, 2 * config.batch_size // world.size)
    train_source = BatchSource(
        train_set, train_sampler, device, config.preload, workers, config.seed, normalization
    )
    val_source = BatchSource(
        val_set, val_sampler, device, config.preload, workers, config.seed, normalization
    )
    return train_source, val_source, workers


def _build_model(
    config: TrainConfig, task: Task, checkpoint: dict | None, device: torch.device
) -> tuple[ModelConfig, nn.Module, WeightEMA | None]:
    """The model's configuration, the model on ``device`` (initialised, or the checkpoint's weights)
    and its weight average (None without EMA).

    Raises ConfigError when the checkpoint of a resumed run holds another model than the settings give.
    """
    model_config = ModelConfig(config.model, task.num_outputs, config.model_options())
    if checkpoint is not None and checkpoint["model"] != model_config.to_dict():
        raise ConfigError(
            f"{Path(config.run) / LAST} holds model {checkpoint['model']}, the settings give "
            f"{model_config.to_dict()}: resume without changing the model (--model, --width, "
            f"--dropout, --freq-pools, --norm, --members), or start a new --run"
        )
    model = build_model(model_config)
    task.init_head(model)
    model = place_model(model, device)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
    ema = WeightEMA(model, config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None and checkpoint is not None:
        ema.load_state_dict(checkpoint["ema_state_dict"])
    return model_config, model, ema


def start_run(
    config: TrainConfig, resume: bool = False, world: World | None = None, device: torch.device | None = None
) -> TrainingRun:
    """Check the settings and the run folder, open the data, build (or restore) model and optimiser.

    The order of random draws (seed, model initialisation, then the restored RNG
    state on resume) is what makes a resumed run equal an uninterrupted one.
    """
    checkpoint = _check_run_folder(config, resume)
    world = world or World()
    device = device or resolve_device(config.device)
    run_dir = Path(config.run)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_set, val_set = _open_splits(config, checkpoint)
    task = _task(config, checkpoint, train_set, val_set)
    if checkpoint is not None:
        normalization = checkpoint["normalization"]
    else:
        normalization = band_statistics(train_set) if config.normalize else None

    if len(train_set) < world.size:
        raise ConfigError(
            f"{config.shards}: the train split has {len(train_set)} samples, fewer than "
            f"the {world.size} ranks"
        )
    model_config, model, ema = _build_model(config, task, checkpoint, device)
    model = distributed.prepare_model(model, world, device)
    optimizer = build_optimizer(config, model)
    criterion = task.criterion(config, train_set, device)
    train_source, val_source, workers = _batch_sources(
        config, train_set, val_set, device, normalization, world, task
    )
    run = TrainingRun(
        config=config,
        run_dir=run_dir,
        device=device,
        model_config=model_config,
        model=model,
        optimizer=optimizer,
        criterion=criterion,
        task=task,
        train_source=train_source,
        val_source=val_source,
        class_names=train_set.class_names,
        recipe=train_set.recipe,
        normalization=normalization,
        world=world,
        ema=ema,
    )
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        run.start_epoch, run.best, run.history = (
            checkpoint["epoch"],
            checkpoint["best_metric"],
            checkpoint["history"],
        )
        restore_rng_state(_rank_rng(checkpoint, world))
    if world.main:
        save_config(config, run_dir)
    log.info(
        "train: %d samples, validation: %d, %s; model %s (%s parameters) on %s%s, "
        "%d loader workers, preload %s",
        len(train_set),
        len(val_set),
        task.describe_outputs(),
        config.model,
        f"{count_parameters(model):,}",
        device,
        f" x {world.size} ranks" if world.distributed else "",
        workers,
        config.preload,
    )
    return run


def _rank_rng(checkpoint: dict, world: World) -> dict:
    """This rank's saved RNG state; rank 0's when the run was saved with another number of ranks."""
    per_rank = checkpoint.get("rank_rng") or [checkpoint["rng"]]
    return per_rank[world.rank] if len(per_rank) == world.size else checkpoint["rng"]


def run_epoch(run: TrainingRun, epoch: int, writer) -> dict:
    """Train one epoch, validate, write last.pt (and best.pt if it improved), log; the history entry."""
    config, world = run.config, run.world
    entry = train_epoch(run, epoch)
    checked = (epoch + 1) % config.validate_every == 0 or epoch + 1 == config.epochs
    val_labels = run.val_source.dataset.labels  # the top-level classes (-1: none), in split order
    if checked:
        val_scores, val_targets = validate(run)
    else:  # not validated this epoch: NaN metrics, best.pt stays as it is
        val_scores = np.zeros((0, run.task.num_outputs), np.float32)
        val_targets, val_labels = run.val_source.dataset.targets[:0], val_labels[:0]
    entry.update(run.task.validation_metrics(run.criterion, val_scores, val_targets, val_labels, run.device))
    run.history.append(entry)
    score = entry["val_" + run.select_metric]
    # Without validation data (NaN) every validated epoch counts as the best: best.pt = last.pt.
    improved = (bool(score > run.best) if np.isfinite(score) else True) and checked
    run.best = max(run.best, score) if np.isfinite(score) else run.best
    rank_rng = distributed.gather_objects(rng_state(), world)
    if not world.main:
        return entry
    state = run.checkpoint_state(epoch, rank_rng)
    save_checkpoint(run.run_dir / LAST, state)
    if improved:
        save_checkpoint(run.run_dir / BEST, state)
    log_epoch(writer, entry, val_scores, val_targets, run.task, epoch)
    atomic_write_text(run.run_dir / "history.json", json.dumps(run.history, indent=1) + "\n")
    log.info(
        "epoch %d/%d: %s%s | %.0f samples/s",
        epoch + 1,
        config.epochs,
        run.task.epoch_summary(entry),
        " (best)" if improved else "",
        entry["samples_per_s"],
    )
    return entry


def validate(run: TrainingRun) -> tuple[np.ndarray, np.ndarray]:
    """Scores (N, K) and targets (N,) or (N, G) of the whole validation split, in order, on every rank.

    Each rank scores its part with the plain model (rank 0's BatchNorm statistics, broadcast
    first); the parts are gathered in rank order.
    """
    distributed.broadcast_buffers(run.eval_model, run.world)
    scores, targets = predict_scores(
        run.eval_model,
        run.val_source,
        run.device,
        desc="validation",
        chunk_frames=run.config.crop_frames,
        probabilities=run.task.probabilities,
    )
    return (
        distributed.gather_rows(scores, run.world, run.device),
        distributed.gather_rows(targets, run.world, run.device),
    )


def batch_loss(
    model: nn.Module, criterion, x: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training forward pass: the loss to step on, the loss to report, the logits (B, K).

    For an :class:`train.models.Ensemble` of M members the loss to step on is the sum of the
    members' losses, so each member's gradient is exactly what it would get training alone (SGD's
    step does not shrink with M); the loss reported is their mean, comparable with one model's,
    and the logits are the members' mean.
    """
    output = model(x)  # (M * B, K): a block of rows per member
    member_targets, logits = per_member(targets, output)
    loss = criterion(output.float(), member_targets)  # the mean over members of each one's loss
    return loss * (len(output) // len(targets)), loss, logits


def train_epoch(run: TrainingRun, epoch: int) -> dict:
    """One pass over ``run.train_source`` with the scheduled learning rate; loss, the task's training
    figure (``train_accuracy``; multilabel: ``train_hit_at_1``) and speed.

    ``run.task`` makes each batch's targets, and counts what is right. Each batch is augmented on
    the device (``run.config.augment_settings()``, seeded by ``(seed, epoch, step, rank)``) and
    ``run.ema``, when on, follows the weights after every step. Under torchrun: this rank's parts of
    the global batches (augmented, and mixed by mixup, within the part); the returned loss, accuracy
    and sample counts are those of all ranks together.
    """
    config, world, device, task = run.config, run.world, run.device, run.task
    model, optimizer, source = run.model, run.optimizer, run.train_source
    model.train()
    steps = len(source)
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(
        source.epoch(epoch),
        total=steps,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        leave=False,
        mininterval=1,
        unit="batch",
        disable=progress_disabled() or not world.main,
    )
    lr = config.lr
    augment = config.augment_settings()
    num_classes = model_num_classes(model)
    for step, (x, y) in enumerate(bar):
        lr = learning_rate(config, epoch, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        targets = task.targets(y)
        if augment.enabled:
            generator = torch.Generator().manual_seed(batch_seed(config.seed, epoch, step, world.rank))
            x, targets = augment_batch(x, targets, num_classes, augment, generator)
        with autocast(device):
            step_loss, loss, logits = batch_loss(model, run.criterion, prepare_input(x, device), targets)
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        if run.ema is not None:
            run.ema.update(distributed.unwrap(model))
        total_loss += loss.detach() * len(y)
        total_correct += task.correct(logits, y)
        seen += len(y)
        if step % 10 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{total_loss.item() / seen:.4f}",
                **{task.train_metric: f"{total_correct.item() / seen:.3f}"},
                samples_s=f"{seen * world.size / max(elapsed, 1e-9):.0f}",
                lr=f"{lr:.2e}",
            )
    bar.close()
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen = distributed.sum_over_ranks(
        [total_loss.item(), total_correct.item(), seen], world, device
    )
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": loss_sum / max(seen, 1),
        "train_" + task.train_metric: correct / max(seen, 1),
        "train_samples": int(seen),
        "seconds": elapsed,
        "samples_per_s": seen / max(elapsed, 1e-9),
    }


def log_epoch(writer, entry: dict, scores: np.ndarray, targets: np.ndarray, task: Task, epoch: int) -> None:
    """Scalars of one epoch to TensorBoard, and the task's own (accuracy and the validation confusion
    image for single-label; mAP for multilabel); validation figures only when the epoch was validated."""
    step = epoch + 1
    writer.add_scalar("loss/train", entry["train_loss"], step)
    writer.add_scalar("lr", entry["lr"], step)
    writer.add_scalar("samples_per_s", entry["samples_per_s"], step)
    if len(targets):
        writer.add_scalar("loss/validation", entry["val_loss"], step)
    task.log_tensorboard(writer, entry, scores, targets, step)
    writer.flush()
