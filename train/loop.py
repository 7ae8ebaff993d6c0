"""The training driver: data, model, optimiser, epochs, validation, checkpoints, logs.

Everything stateful lives here (I/O, the progress bar, TensorBoard); the pieces it
calls (sampling, metrics, the learning-rate schedule) are pure functions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shards import atomic_write_text
from train import metrics
from train.checkpoint import BEST, LAST, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from train.config import TrainConfig, save_config
from train.dataset import ShardDataset
from train.models import ModelConfig, build_model, count_parameters
from train.sampling import EpochBatchSampler


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to this torch "
                         f"({torch.__version__}); use --device cpu or auto")
    if name not in ("cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {name!r}")
    return torch.device(name)


def resolve_workers(requested: int, device: torch.device, preload: str) -> int:
    """DataLoader workers: -1 picks 0 on CPU training or machines with <= 4 cores, else 4.

    On a 2-core machine two workers cost more in inter-process copies than they
    gain (bench/dataset.py); on CPU the model, not the loader, is the bottleneck.
    """
    if preload != "none":
        return 0
    if requested >= 0:
        return requested
    if device.type == "cpu" or (os.cpu_count() or 1) <= 4:
        return 0
    return 4


def learning_rate(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of one optimiser step (pure function).

    Linear warm-up from ~0 to ``config.lr`` over ``warmup_epochs``, then ``lr``
    times ``gamma`` for every milestone epoch already reached.
    """
    progress = epoch + (step + 1) / max(steps_per_epoch, 1)
    if config.warmup_epochs > 0 and progress <= config.warmup_epochs:
        return config.lr * progress / config.warmup_epochs
    decays = sum(1 for m in config.resolved_milestones() if epoch >= m)
    return config.lr * config.gamma ** decays


def class_weight_tensor(counts: np.ndarray, mode: str) -> torch.Tensor | None:
    """Cross-entropy weights: None, or N / (K * count) per class ("balanced"; 0 if absent)."""
    if mode == "none":
        return None
    counts = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


class BatchSource:
    """Batches of one split on the device: a DataLoader over the shard Dataset, or
    (``preload="gpu"``) index gathers from the whole split already on the GPU."""

    def __init__(self, dataset: ShardDataset, sampler: EpochBatchSampler, device: torch.device,
                 preload: str, num_workers: int, seed: int, normalization: dict | None = None):
        self.dataset, self.sampler, self.device, self.seed = dataset, sampler, device, seed
        self.preload = preload
        self.num_workers = num_workers
        self.images = self.targets = None
        # Standardisation runs on the device after the copy (cheap there, and the
        # loader workers only move raw bytes).
        self.mean = self.std = None
        if normalization is not None:
            self.mean = normalization["mean"].to(device, torch.float32).reshape(1, 1, 128, 1)
            self.std = normalization["std"].to(device, torch.float32).reshape(1, 1, 128, 1)
        if preload == "gpu":
            self.images = torch.from_numpy(dataset.raw_array()).to(device).unsqueeze(1)
            if self.mean is not None:
                self.images.sub_(self.mean).div_(self.std)
            self.targets = torch.from_numpy(dataset.labels).to(device)
        elif preload == "ram":
            dataset.preload()

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch(self, epoch: int):
        """Iterate ``(x (B, 1, 128, 128), y (B,))`` on the device for one epoch."""
        self.sampler.set_epoch(epoch)
        if self.images is not None:
            for indices in self.sampler:
                idx = torch.from_numpy(indices).to(self.device, non_blocking=True)
                yield self.images.index_select(0, idx), self.targets.index_select(0, idx)
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=None, sampler=self.sampler, num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch),
            prefetch_factor=4 if self.num_workers else None,
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            if self.mean is not None:
                x = (x - self.mean) / self.std
            yield x, y.to(self.device, non_blocking=True)


def _prepare(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def predict_scores(model: nn.Module, source: BatchSource, device: torch.device,
                   desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities over a split, in dataset order.

    Returns
    -------
    scores : np.ndarray, shape (N, K), float32
    labels : np.ndarray, shape (N,), int64
    """
    model.eval()
    scores, labels = [], []
    for x, y in tqdm(source.epoch(0), total=len(source), desc=desc, leave=False, mininterval=1):
        with _autocast(device):
            logits = model(_prepare(x, device))
        scores.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels.append(y.cpu().numpy())
    k = model_num_classes(model)
    return (np.concatenate(scores) if scores else np.zeros((0, k), np.float32),
            np.concatenate(labels) if labels else np.zeros(0, np.int64))


def model_num_classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def confusion_image(confusion: np.ndarray, class_names: list[str], title: str) -> np.ndarray:
    """The confusion plot as an RGB array (H, W, 3) uint8, for TensorBoard."""
    import matplotlib.pyplot as plt

    from train.evaluate import confusion_figure

    fig = confusion_figure(confusion, class_names, title)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def _open_split(config: TrainConfig, split: str) -> ShardDataset:
    return ShardDataset(config.shards, split, verify=config.verify_shards)


def fit(config: TrainConfig, resume: bool = False) -> dict:
    """Train ``config.model`` on the shard set; write checkpoints and logs to ``config.run``.

    Returns
    -------
    dict
        The last epoch's history entry (losses, metrics, timing).
    """
    from tensorboardX import SummaryWriter

    config.validate()
    if not config.shards or not config.run:
        raise ValueError("both --shards and --run are required")
    device = resolve_device(config.device)
    run_dir = Path(config.run)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(run_dir / LAST) if resume else None
    if not resume and (run_dir / LAST).exists():
        raise ValueError(f"{run_dir / LAST} exists: pass --resume to continue that run, "
                         f"or choose another --run folder")

    torch.manual_seed(config.seed)
    train_set = _open_split(config, "train")
    val_set = _open_split(config, "validation")
    if len(train_set) == 0:
        raise ValueError(f"{config.shards}: the train split is empty")
    class_names = train_set.class_names
    if checkpoint is not None and checkpoint["class_names"] != class_names:
        raise ValueError(f"{config.shards}: class names differ from the checkpoint's; resume with "
                         f"the shard set the run was started on")

    if checkpoint is not None:
        normalization = checkpoint["normalization"]
    elif config.normalize:
        mean, std = train_set.band_statistics()
        normalization = {"mean": torch.from_numpy(mean), "std": torch.from_numpy(std)}
    else:
        normalization = None

    model_config = ModelConfig(config.model, len(class_names))
    model = build_model(model_config).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    weights = class_weight_tensor(train_set.class_counts(), config.class_weights)
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))

    start_epoch, best, history = 0, -1.0, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, best, history = checkpoint["epoch"], checkpoint["best_metric"], checkpoint["history"]
        restore_rng_state(checkpoint["rng"])
    save_config(config, run_dir)

    workers = resolve_workers(config.num_workers, device, config.preload)
    train_source = BatchSource(
        train_set, EpochBatchSampler(len(train_set), config.batch_size, shuffle=True, seed=config.seed,
                                     drop_last=len(train_set) > config.batch_size,
                                     max_batches=config.max_steps_per_epoch),
        device, config.preload, workers, config.seed, normalization)
    val_source = BatchSource(val_set, EpochBatchSampler(len(val_set), 2 * config.batch_size, shuffle=False),
                             device, config.preload, workers, config.seed, normalization)
    print(f"train: {len(train_set)} samples, validation: {len(val_set)}, {len(class_names)} classes; "
          f"model {config.model} ({count_parameters(model):,} parameters) on {device}, "
          f"{workers} loader workers, preload {config.preload}", flush=True)
    if start_epoch >= config.epochs:
        print(f"{run_dir}: already trained for {start_epoch} epochs (--epochs {config.epochs}); "
              "nothing to do")
        return history[-1] if history else {}

    writer = SummaryWriter(logdir=str(run_dir / "tensorboard"))
    try:
        for epoch in range(start_epoch, config.epochs):
            entry = _train_epoch(model, optimizer, criterion, train_source, config, epoch, device, writer)
            val_scores, val_labels = predict_scores(model, val_source, device, desc="validation")
            entry.update(_validation_metrics(model, criterion, val_scores, val_labels, class_names, device))
            history.append(entry)
            score = entry["val_" + config.select_metric]
            # Without validation data (NaN) every epoch counts as the best: best.pt = last.pt.
            improved = bool(score > best) if np.isfinite(score) else True
            best = max(best, score) if np.isfinite(score) else best
            state = {
                "model": model_config.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1, "best_metric": float(best), "metric_name": config.select_metric,
                "history": history, "config": config.to_dict(), "class_names": class_names,
                "recipe": train_set.recipe, "normalization": normalization, "rng": rng_state(),
            }
            save_checkpoint(run_dir / LAST, state)
            if improved:
                save_checkpoint(run_dir / BEST, state)
            _log_epoch(writer, entry, val_scores, val_labels, class_names, epoch)
            atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1) + "\n")
            print(f"epoch {epoch + 1}/{config.epochs}: train loss {entry['train_loss']:.4f} "
                  f"acc {entry['train_accuracy']:.3f} | val loss {entry['val_loss']:.4f} "
                  f"acc {entry['val_accuracy']:.3f} macro-F1 {entry['val_macro_f1']:.3f}"
                  f"{' (best)' if improved else ''} | {entry['samples_per_s']:.0f} samples/s", flush=True)
    finally:
        writer.close()
    print(f"checkpoints: {run_dir / BEST} (best val {config.select_metric} {best:.4f}), {run_dir / LAST}")
    return history[-1]


def _train_epoch(model, optimizer, criterion, source: BatchSource, config: TrainConfig, epoch: int,
                 device: torch.device, writer) -> dict:
    model.train()
    steps = len(source)
    total_loss = torch.zeros((), device=device)
    total_correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(source.epoch(epoch), total=steps, desc=f"epoch {epoch + 1}/{config.epochs}",
               leave=False, mininterval=1, unit="batch")
    lr = config.lr
    for step, (x, y) in enumerate(bar):
        lr = learning_rate(config, epoch, step, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with _autocast(device):
            logits = model(_prepare(x, device))
            loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y)
        total_correct += (logits.argmax(dim=1) == y).sum()
        seen += len(y)
        if step % 10 == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}",
                            acc=f"{total_correct.item() / seen:.3f}",
                            samples_s=f"{seen / max(elapsed, 1e-9):.0f}", lr=f"{lr:.2e}")
    bar.close()
    elapsed = time.perf_counter() - start
    return {"epoch": epoch + 1, "lr": lr, "train_loss": total_loss.item() / max(seen, 1),
            "train_accuracy": total_correct.item() / max(seen, 1), "train_samples": seen,
            "seconds": elapsed, "samples_per_s": seen / max(elapsed, 1e-9)}


def _validation_metrics(model, criterion, scores: np.ndarray, labels: np.ndarray, class_names,
                        device) -> dict:
    if len(labels) == 0:
        return {"val_loss": float("nan"), "val_accuracy": float("nan"), "val_macro_f1": float("nan")}
    log_probs = torch.log(torch.from_numpy(scores).clamp_min(1e-12)).to(device)
    loss = nn.functional.nll_loss(log_probs, torch.from_numpy(labels).to(device),
                                  weight=criterion.weight).item()
    result = metrics.summary(labels, scores.argmax(axis=1), len(class_names), scores)
    return {"val_loss": loss, "val_accuracy": result["accuracy"], "val_macro_f1": result["macro_f1"],
            "val_balanced_accuracy": result["balanced_accuracy"]}


def _log_epoch(writer, entry: dict, scores, labels, class_names, epoch: int) -> None:
    step = epoch + 1
    writer.add_scalar("loss/train", entry["train_loss"], step)
    writer.add_scalar("loss/validation", entry["val_loss"], step)
    writer.add_scalar("accuracy/train", entry["train_accuracy"], step)
    writer.add_scalar("accuracy/validation", entry["val_accuracy"], step)
    writer.add_scalar("macro_f1/validation", entry["val_macro_f1"], step)
    writer.add_scalar("lr", entry["lr"], step)
    writer.add_scalar("samples_per_s", entry["samples_per_s"], step)
    if len(labels):
        confusion = metrics.confusion_matrix(labels, scores.argmax(axis=1), len(class_names))
        image = confusion_image(confusion, class_names, f"validation, epoch {step}")
        writer.add_image("confusion/validation", image, step, dataformats="HWC")
    writer.flush()
