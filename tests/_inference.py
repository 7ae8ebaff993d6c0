"""Helpers of the inference tests (predict, embed, export): untrained checkpoints, generated MP3s."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from preprocess.recipe import Recipe
from preprocess.synth.audio import encode_mp3
from train.checkpoint import load_checkpoint, save_checkpoint
from train.chunks import chunk_starts
from train.inference import load_model
from train.models import ModelConfig, build_model, output_layers


def make_checkpoint(
    path,
    name: str,
    num_classes: int = 6,
    seed: int = 0,
    class_names: list | None = None,
    recipe: dict | None = None,
    config: dict | None = None,
    task: dict | None = None,
    options: dict | None = None,
) -> dict:
    """A checkpoint of a random model (non-trivial BatchNorm statistics, confident logits).

    ``recipe``: the recipe of the image it reads (default the reference recipe); ``config``: the
    training config it records (e.g. ``{"image": "mel_fine", "crop_frames": 128}`` for a chunk model);
    ``task``: a ``train.tasks`` task dict (a multi-label head has ``len(task["columns"])`` outputs);
    ``options``: the model's options (e.g. ``{"members": 2}``).
    """
    if task is not None and task["name"] == "multilabel":
        num_classes = len(task["columns"])
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name, num_classes, dict(options or {})))
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.momentum = None  # running statistics: the plain mean over what one pass sees
            m.reset_running_stats()
        # Statistics measured on a batch of standardised image-like inputs, as training measures them:
        # with arbitrary ones the deep short-chunk CNN gives nearly the same output for every input.
        generator = torch.Generator().manual_seed(seed)
        model.train()(
            torch.randn(16, 1, 128, 128, generator=generator)
            + torch.randn(16, 1, 128, 1, generator=generator)
        )
        for m in norms:
            m.momentum = 0.1
        # Larger logits than at initialisation, so different inputs get clearly different scores.
        for last in output_layers(model):  # every member's, for an ensemble
            last.weight.mul_(5.0)
    rng = np.random.default_rng(seed)
    state = {
        "model": ModelConfig(name, num_classes, dict(options or {})).to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "epoch": 3,
        "best_metric": 0.5,
        "metric_name": "macro_f1",
        "history": [],
        "config": dict(config or {}),
        "class_names": class_names or [f"genre{i}" for i in range(num_classes)],
        "task": task or {"name": "single"},
        "recipe": dict(recipe or Recipe().to_dict()),
        "normalization": {
            "mean": torch.from_numpy(rng.normal(-40, 5, 128).astype(np.float32)),
            "std": torch.from_numpy(rng.uniform(5, 15, 128).astype(np.float32)),
        },
    }
    save_checkpoint(path, state)
    return load_checkpoint(path)


SR = 44100


def tones(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """Stereo (n, 2) float32: a tone rising an octave every 20 s, pulsing, over noise: windows differ."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    pitch = (150 + 50 * seed) * 2.0 ** ((t % 80) / 20)
    y = 0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / sr) * (0.6 + 0.4 * np.sin(2 * np.pi * t / 7.0))
    y = y + 0.02 * rng.standard_normal(n)
    return np.stack([y, 0.8 * y], axis=1).astype(np.float32)


def write_mp3(path, seconds: float, seed: int = 0, sr: int = SR):
    path.write_bytes(encode_mp3(tones(seconds, seed, sr), sr, 128, vbr=False))
    return path


def direct_scores(checkpoint: dict, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and embeddings of raw images (W, 128, n_frames), computed here by hand:
    normalised, and for a chunk model (the checkpoint's ``crop_frames`` shorter than the images) cut
    into the chunks of :func:`train.chunks.chunk_starts`, each run through the model, then averaged."""
    model = load_model(checkpoint, torch.device("cpu"))
    mean = checkpoint["normalization"]["mean"][:, None]
    std = checkpoint["normalization"]["std"][:, None]
    x = ((torch.from_numpy(images) - mean) / std)[:, None]
    crop = checkpoint["config"].get("crop_frames") or images.shape[-1]
    starts = chunk_starts(images.shape[-1], crop).tolist()
    with torch.no_grad():
        chunks = [x[..., s : s + crop] for s in starts]
        probabilities = torch.stack([torch.softmax(model(c), 1) for c in chunks]).mean(0)
        embeddings = torch.stack([model.embed(c) for c in chunks]).mean(0)
    return probabilities.numpy(), embeddings.numpy()
