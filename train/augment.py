"""Augmentation of a batch on the device, after the copy: pure functions of (batch, settings, seed).

The loader reads exactly what it reads without augmentation; these functions change the batch
already on the device (GPU or CPU), so they cost no loader time and no host copies. Images are
``(B, 1, 128, 128)``: mel bands on axis 2, time frames on axis 3, already standardised (a masked
region is set to 0, the band's training-split mean).

* frequency masks (SpecAugment): ``freq_masks`` bands of up to ``freq_mask_width`` mel bands each;
* time masks (SpecAugment): ``time_masks`` spans of up to ``time_mask_width`` frames each;
* circular time shift: each image rolled along time by up to ``time_shift`` x its width;
* mixup: each image mixed with another of the batch, ``lam * x_i + (1 - lam) * x_j`` with
  ``lam ~ Beta(mixup_alpha, mixup_alpha)`` per batch; the targets become the same mixture of the
  label vectors (the one-hot classes, or the multi-hot genres of a multi-label task).

Every random draw comes from one CPU ``torch.Generator`` seeded by :func:`batch_seed` from
``(seed, epoch, step)``: the same run gives the same augmented batches on any device, and a
resumed run augments as an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentSettings:
    """What to apply (all off by default). Widths are maxima: each mask's width is drawn from 0..max."""

    freq_masks: int = 0
    freq_mask_width: int = 0
    time_masks: int = 0
    time_mask_width: int = 0
    time_shift: float = 0.0
    mixup_alpha: float = 0.0

    def __post_init__(self):
        for name in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation {name}={getattr(self, name)}: must be >= 0")
        if not 0.0 <= self.time_shift <= 1.0:
            raise ValueError(
                f"augmentation time_shift={self.time_shift}: must be in [0, 1] "
                "(a fraction of the image width)"
            )
        if self.mixup_alpha < 0:
            raise ValueError(f"augmentation mixup_alpha={self.mixup_alpha}: must be >= 0 (0 turns it off)")

    @property
    def enabled(self) -> bool:
        return bool(
            (self.freq_masks and self.freq_mask_width)
            or (self.time_masks and self.time_mask_width)
            or self.time_shift > 0
            or self.mixup_alpha > 0
        )


def batch_seed(seed: int, epoch: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for one batch's draws, from (run seed, epoch, step, stream e.g. a rank)."""
    return int(
        np.random.SeedSequence([int(seed), int(epoch), int(step), int(stream)]).generate_state(2, np.uint64)[
            0
        ]
        >> np.uint64(1)
    )


def span_masks(
    batch: int, length: int, count: int, max_width: int, generator: torch.Generator
) -> torch.Tensor:
    """Boolean masks of ``count`` random spans per row, each of width 0..max_width.

    Returns
    -------
    torch.Tensor, shape (batch, length), bool (CPU)
        True inside any of the row's spans.
    """
    max_width = min(max_width, length)
    if count == 0 or max_width == 0:
        return torch.zeros(batch, length, dtype=torch.bool)
    widths = torch.randint(0, max_width + 1, (batch, count), generator=generator)
    starts = (torch.rand(batch, count, generator=generator) * (length - widths + 1)).long()
    pos = torch.arange(length).view(1, 1, length)
    inside = (pos >= starts.unsqueeze(2)) & (pos < (starts + widths).unsqueeze(2))
    return inside.any(dim=1)


def circular_shift(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each image along time (axis 3) by its own number of frames.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, F, T)
    shifts : torch.Tensor, shape (B,), int (frames; positive moves content later)
    """
    b, c, f, t = x.shape
    index = (torch.arange(t, device=x.device).view(1, t) - shifts.to(x.device).view(b, 1)) % t
    return x.gather(3, index.view(b, 1, 1, t).expand(b, c, f, t))


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, settings: AugmentSettings, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``settings`` to one batch.

    Parameters
    ----------
    x : torch.Tensor, shape (B, 1, F, T), float, on any device
    y : torch.Tensor
        The targets: shape (B,) int64 class labels, or (B, K) float label vectors (multi-label:
        0/1 per genre), as ``train.tasks.Task.targets`` makes them.
    num_classes : int
        K (the one-hot width of class labels).
    settings : AugmentSettings
    generator : torch.Generator (CPU)
        The source of every random draw (see :func:`batch_seed`).

    Returns
    -------
    x : torch.Tensor, shape (B, 1, F, T)
        The augmented images (a new tensor; the input is not modified).
    targets : torch.Tensor
        ``y`` unchanged without mixup; with mixup the mixed label vectors, shape (B, num_classes)
        float32: of class labels, the one-hot rows mixed (rows summing to 1;
        ``nn.CrossEntropyLoss`` takes both forms); of label vectors, the vectors mixed.
    """
    b, _, f, t = x.shape
    device = x.device
    if settings.time_shift > 0:
        limit = int(round(settings.time_shift * t))
        shifts = torch.randint(-limit, limit + 1, (b,), generator=generator)
        x = circular_shift(x, shifts)
    band = span_masks(b, f, settings.freq_masks, settings.freq_mask_width, generator)
    frames = span_masks(b, t, settings.time_masks, settings.time_mask_width, generator)
    if band.any() or frames.any():
        mask = band.view(b, 1, f, 1) | frames.view(b, 1, 1, t)
        x = x.masked_fill(mask.to(device), 0.0)
    if settings.mixup_alpha <= 0:
        return x, y
    lam = beta_draw(settings.mixup_alpha, generator)
    partner = torch.randperm(b, generator=generator).to(device)
    x = lam * x + (1.0 - lam) * x.index_select(0, partner)
    vectors = torch.nn.functional.one_hot(y, num_classes).to(torch.float32) if y.ndim == 1 else y.float()
    targets = lam * vectors + (1.0 - lam) * vectors.index_select(0, partner)
    return x, targets


def beta_draw(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha), taken from ``generator`` (torch's Beta sampler takes no
    generator, so a numpy generator is seeded from it)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))
