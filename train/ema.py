"""Exponential moving average (EMA) of a model's weights.

After every optimiser step, ``ema = d * ema + (1 - d) * weights`` for every parameter and
floating-point buffer (BatchNorm's running statistics too); integer buffers (BatchNorm's batch
counter) are copied. The decay is warmed up, ``d = min(decay, (1 + n) / (10 + n))`` after ``n``
updates, so that a short run's average is not dominated by the random initial weights.

When enabled (``ema_decay > 0``), validation and the choice of ``best.pt`` use the averaged
weights, the checkpoint stores them as ``ema_state_dict`` beside the raw ``state_dict`` (needed to
resume), and ``test``, ``predict`` and ``export`` load them (:func:`inference_state_dict`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from train.distributed import unwrap


class WeightEMA:
    """The averaged copy of ``model`` (``.model``, in eval mode, no gradients).

    ``model`` may be wrapped in DistributedDataParallel (under torchrun): the average is of the
    plain model inside, so its state dict has the plain model's keys.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay={decay}: must be in (0, 1) (0 in the config turns EMA off)")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(unwrap(model)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (warmed up over the first updates)."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimiser step)."""
        d = self.current_decay()
        source = unwrap(model).state_dict()
        for name, value in self.model.state_dict().items():
            new = source[name].detach()
            if value.dtype.is_floating_point:
                value.lerp_(new.to(value.dtype), 1.0 - d)
            else:
                value.copy_(new)
        self.updates += 1

    def state_dict(self) -> dict:
        """The averaged weights (CPU tensors) and the update count."""
        return {
            "weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["weights"])
        self.updates = int(state["updates"])


def inference_state_dict(checkpoint: dict) -> dict:
    """The weights to evaluate a checkpoint with: the EMA's when it has them, else the raw ones."""
    ema = checkpoint.get("ema_state_dict")
    return ema["weights"] if ema is not None else checkpoint["state_dict"]
