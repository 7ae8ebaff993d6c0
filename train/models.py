"""CNNs over (B, 1, 128, 128) log-mel images, selectable by name.

``seed``    the reference project's CNN, layer for layer (241,472 parameters for 16 classes).
``resnet``  a deeper residual CNN with global average+max pooling (1,234,032 parameters for 16).
``shortchunk`` a 7-block CNN with global pooling for ~3 s chunks of the fine image (any input size).

Any of them can be trained as an :class:`Ensemble` of several copies (``members`` in the model's
options, ``--members`` of ``train fit``): one model file, scored as one model.

Every model has ``embed(x)``: the penultimate-layer vectors (B, embedding_dim)
that its last linear layer maps to the logits (``python -m train embed``).

Both take ``norm``: ``"batch"`` (BatchNorm, the default and the reference) or ``"group"``
(GroupNorm of 8 groups in place of every BatchNorm, same parameter count): it normalises
each sample on its own, so a model trains the same whatever the batch is split into
(data-parallel ranks on CPU, where SyncBatchNorm is not available; small per-GPU batches).

Add a model: write an ``nn.Module`` whose constructor takes ``num_classes`` (and
keyword options), with ``embed(x)``, ``classify(embedding)`` (the last layer),
``forward(x) = classify(embed(x))`` and an ``embedding_dim`` attribute, and
register it in :data:`MODELS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """BatchNorm (``dims``-D) or GroupNorm with 8 groups (per sample) over ``channels`` channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(8, channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class SeedCNN(nn.Module):
    """The reference CNN.

    Four blocks of 3x3 conv (padding 1) + BatchNorm + ReLU + 2x2 max-pool take
    (B, 1, 128, 128) through 8, 16, 32, 64 channels to (B, 64, 8, 8); a 2x2
    stride-2 conv + BatchNorm + ReLU gives (B, 64, 4, 4) = 1024 features; a
    1024 -> 192 linear layer + BatchNorm1d + ReLU (the 192-d embedding), then
    192 -> num_classes logits.
    """

    embedding_dim = 192

    def __init__(self, num_classes: int = 16, norm: str = "batch"):
        super().__init__()
        blocks = []
        channels = [1, 8, 16, 32, 64]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1),
                norm_layer(norm, c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        blocks += [nn.Conv2d(64, 64, 2, stride=2), norm_layer(norm, 64), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(1024, 192),
            norm_layer(norm, 192, dims=1),
            nn.ReLU(inplace=True),
            nn.Linear(192, num_classes),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 128) -> penultimate-layer vectors (B, 192), after the last ReLU."""
        return self.classifier[:-1](self.features(x))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, 192) -> logits (B, num_classes)."""
        return self.classifier[-1](embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 128) -> logits (B, num_classes)."""
        return self.classify(self.embed(x))


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm layers with a (projected when needed) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str = "batch"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            norm_layer(norm, c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            norm_layer(norm, c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), norm_layer(norm, c_out)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetCNN(nn.Module):
    """A residual CNN with global pooling.

    Stem: 3x3 conv to ``width`` channels + BatchNorm + ReLU + 2x2 max-pool
    (128 -> 64). Four stages of one residual block each, widths
    ``width * (1, 2, 4, 8)``, the last three with stride 2 (64 -> 8). Global
    average and max pooling over frequency and time are concatenated, then
    dropout and a linear layer give the logits (B, num_classes). The pooled
    vector (B, 16 * width) is the embedding.
    """

    def __init__(self, num_classes: int = 16, width: int = 32, dropout: float = 0.3, norm: str = "batch"):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False),
            norm_layer(norm, width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        stages, c_in = [], width
        for i, c_out in enumerate(widths):
            stages.append(ResidualBlock(c_in, c_out, stride=1 if i == 0 else 2, norm=norm))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * c_in, num_classes))
        self.embedding_dim = 2 * c_in

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 128) -> penultimate-layer vectors (B, 16 * width): global mean and max pooling."""
        h = self.stages(self.stem(x))
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, 16 * width) -> logits (B, num_classes) (dropout only in training)."""
        return self.head(embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 128) -> logits (B, num_classes)."""
        return self.classify(self.embed(x))


class ShortChunkCNN(nn.Module):
    """A short-chunk CNN: made for ~3 s chunks of the fine image (any size works).

    After the short-chunk CNNs of music tagging (Won et al. 2020): seven blocks of 3x3 conv +
    BatchNorm + ReLU + 2x2 max-pool (ceil mode, so no side shrinks to nothing) with channels
    ``width * (1, 1, 2, 2, 2, 2, 4)``, take (B, 1, 128, 128) to (B, 4 * width, 1, 1); max and
    mean pooling over time are concatenated, a linear layer + BatchNorm1d + ReLU gives the
    embedding (B, 4 * width), then dropout and the logits. With ``freq_pools`` < 7 only the first
    ``freq_pools`` blocks pool frequency (the rest pool time only), so ``128 / 2**freq_pools``
    frequency positions reach the linear layer: the model can tell where in the spectrum a
    pattern is, as the seed CNN's flattened map can. ``width`` 16 costs about
    what the seed CNN costs per 128 x 128 chunk (~20 MMAC), 32 about four times that.
    """

    def __init__(
        self,
        num_classes: int = 16,
        width: int = 16,
        dropout: float = 0.3,
        norm: str = "batch",
        freq_pools: int = 7,
        n_mels: int = 128,
    ):
        super().__init__()
        if not 0 <= freq_pools <= 7:
            raise ValueError(f"freq_pools must be in 0..7, got {freq_pools}")
        channels = [1] + [width * m for m in (1, 1, 2, 2, 2, 2, 4)]
        blocks = []
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                norm_layer(norm, c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d((2 if i < freq_pools else 1, 2), ceil_mode=True),
            ]
        self.features = nn.Sequential(*blocks)
        self.freq_bins = -(-n_mels // 2**freq_pools)  # frequency positions kept to the end
        self.embedding_dim = channels[-1]
        self.project = nn.Sequential(
            nn.Linear(2 * channels[-1] * self.freq_bins, self.embedding_dim),
            norm_layer(norm, self.embedding_dim, dims=1),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.embedding_dim, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, frames) -> penultimate-layer vectors (B, 4 * width)."""
        h = self.features(x)  # (B, C, freq_bins, T')
        pooled = torch.cat([h.amax(dim=3), h.mean(dim=3)], dim=1)  # over time: (B, 2C, freq_bins)
        return self.project(pooled.flatten(1))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, 4 * width) -> logits (B, num_classes) (dropout only in training)."""
        return self.head(embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, n_mels, frames) -> logits (B, num_classes)."""
        return self.classify(self.embed(x))


class Ensemble(nn.Module):
    """Several copies of one model, each from its own initial weights, trained side by side and
    scored as one model.

    In training mode ``forward(x)`` gives every member's logits one after the other, (M * B, K),
    so that the loss over them with the targets repeated M times (:func:`per_member`) is the mean
    of the members' own losses: each member learns as it would alone, on the same batches. In eval
    mode ``forward(x)`` is ``classify(embed(x))``: the mean of the members' logits (B, K), whose
    softmax is the normalised geometric mean of the members' probabilities. ``embed(x)`` puts the
    members' embeddings side by side: (B, M * D).
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.member_dim = int(members[0].embedding_dim)
        self.embedding_dim = self.member_dim * len(members)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> the members' embeddings side by side (B, M * D)."""
        return torch.cat([member.embed(x) for member in self.members], dim=1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, M * D) -> the mean of the members' logits (B, num_classes)."""
        parts = embedding.split(self.member_dim, dim=1)
        return torch.stack([m.classify(e) for m, e in zip(self.members, parts, strict=True)]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training: (B, 1, H, W) -> every member's logits (M * B, K); eval: their mean (B, K)."""
        if self.training:
            return torch.cat([member(x) for member in self.members], dim=0)
        return self.classify(self.embed(x))


def output_layers(model: nn.Module) -> list[nn.Linear]:
    """The last linear layer of a model, or of each member of an :class:`Ensemble` (what maps an
    embedding to the logits)."""
    members = model.members if isinstance(model, Ensemble) else [model]
    return [[m for m in member.modules() if isinstance(m, nn.Linear)][-1] for member in members]


def per_member(targets: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for a training forward pass's logits, and the logits to count right answers by.

    Parameters
    ----------
    targets : torch.Tensor, shape (B,) class indices, or (B, K) soft or multi-hot targets
    logits : torch.Tensor, shape (M * B, K): a model's training output (M = 1 but for an
        :class:`Ensemble`)

    Returns
    -------
    targets : torch.Tensor, shape (M * B, ...): ``targets`` repeated once per member
    mean_logits : torch.Tensor, shape (B, K): the members' mean
    """
    members, rest = divmod(len(logits), len(targets))
    if rest or members < 1:
        raise ValueError(f"{len(logits)} rows of logits for a batch of {len(targets)}")
    if members == 1:
        return targets, logits
    repeated = targets.repeat((members,) + (1,) * (targets.dim() - 1))
    return repeated, logits.view(members, len(targets), -1).mean(dim=0)


MODELS = {"seed": SeedCNN, "resnet": ResNetCNN, "shortchunk": ShortChunkCNN}


@dataclass
class ModelConfig:
    """What :func:`build_model` needs: saved in every checkpoint. ``options`` are the model's
    keyword options, plus ``members`` (>= 2: an :class:`Ensemble` of that many)."""

    name: str
    num_classes: int
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate a registered model (weights initialised from torch's global RNG)."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; choose one of {sorted(MODELS)}")
    if config.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {config.num_classes}")
    options = dict(config.options)
    members = int(options.pop("members", 1))
    if members < 1:
        raise ValueError(f"members must be >= 1, got {members}")
    if members == 1:
        return MODELS[config.name](num_classes=config.num_classes, **options)
    return Ensemble([MODELS[config.name](num_classes=config.num_classes, **options) for _ in range(members)])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
