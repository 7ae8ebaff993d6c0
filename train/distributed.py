"""Data-parallel training through ``torch.distributed``, started by ``torchrun``.

``torchrun --nproc-per-node N -m train fit ...`` starts N copies of ``fit`` with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their
environment; :func:`init` reads them and joins the process group (NCCL on CUDA, one
GPU per local rank; gloo on CPU). Without those variables (plain ``python -m train``)
everything here is a no-op for a world of one, so the loop has a single code path.

Every collective has a deadline (``--dist-timeout``, seconds): a rank that dies makes
its peers' next collective fail at once (the connection closes); one that hangs makes
it fail when the deadline passes. Either way the survivors raise
:class:`DistributedError` instead of waiting forever, and torchrun stops the job.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from shards.errors import FmaGenreError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(FmaGenreError, RuntimeError):
    """The distributed job cannot go on: torchrun's variables are inconsistent, a rank has no GPU,
    or a collective failed (another rank died or hung past ``--dist-timeout``). The message says
    what happened and what to do (mostly: rerun the same command with ``--resume``)."""


@dataclass(frozen=True)
class World:
    """Where this process stands in the job: ``rank`` of ``size``, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, history, TensorBoard and progress."""
        return self.rank == 0


def world_from_env(env: dict | None = None) -> World:
    """The :class:`World` that torchrun's variables describe (a world of one without them).

    Raises
    ------
    DistributedError
        Some of torchrun's variables are set and others missing, or they are not integers.
    """
    env = os.environ if env is None else env
    present = [name for name in TORCHRUN_VARIABLES if name in env]
    if not present:
        return World()
    missing = [name for name in TORCHRUN_VARIABLES if name not in env]
    if missing:
        raise DistributedError(
            f"torch.distributed: {present} are set but {missing} are not; start "
            f"distributed training with `torchrun --nproc-per-node N -m train fit ...`"
        )
    try:
        world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    except ValueError as exc:
        raise DistributedError(
            f"torch.distributed: RANK, WORLD_SIZE, LOCAL_RANK must be integers ({exc})"
        ) from exc
    if not 0 <= world.rank < world.size or world.local_rank < 0:
        raise DistributedError(f"torch.distributed: RANK={world.rank} is not in [0, WORLD_SIZE={world.size})")
    return world


def device_for(world: World, requested: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when training on CUDA, else ``requested``."""
    if requested.type != "cuda" or not world.distributed:
        return requested
    if world.local_rank >= torch.cuda.device_count():
        raise DistributedError(
            f"LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} CUDA "
            f"devices are visible: use --nproc-per-node <= the GPUs per node"
        )
    return torch.device("cuda", world.local_rank)


def init(world: World, device: torch.device, timeout_s: float) -> None:
    """Join the process group of a multi-process job (nothing for a world of one).

    NCCL for CUDA devices, gloo for the CPU; ``timeout_s`` bounds every collective.
    """
    if not world.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timedelta(seconds=timeout_s), device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))


def quiet_other_ranks(world: World) -> None:
    """Ranks other than 0 log warnings and errors only (no info lines, no progress bars)."""
    if not world.main:
        root = logging.getLogger()
        root.setLevel(max(root.getEffectiveLevel(), logging.WARNING))


def shutdown(finished: bool = False) -> None:
    """Leave the process group (if one was joined).

    ``finished``: every rank got to the end, so they first wait for each other (a barrier) and
    then tear the group down together. Without it a rank that ends first takes its connections
    down while another is still tearing its own down, and gloo's threads can abort that process
    at exit (``terminate called without an active exception``). After an error there is no
    barrier: the other ranks may be gone, and it would wait for them until the timeout.
    """
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def prepare_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """The model to train: wrapped in DistributedDataParallel when there are several ranks.

    On CUDA, BatchNorm layers become SyncBatchNorm first, so batch statistics are those of
    the global batch, as in one process. torch's SyncBatchNorm runs only on CUDA: on the
    CPU each rank normalises with the statistics of its own part of the batch (see
    docs/training.md for what that changes).
    """
    if not world.distributed:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def broadcast_buffers(model: nn.Module, world: World) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP copies them at the start of each training forward, so after the last step of an
    epoch the ranks' running statistics differ again (each saw its own part of the last
    batch, on CPU); this makes every rank validate with the statistics rank 0 saves.
    """
    if world.distributed:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def gather_rows(part: np.ndarray, world: World, device: torch.device) -> np.ndarray:
    """Concatenate every rank's rows in rank order, on every rank.

    Parameters
    ----------
    part : np.ndarray, shape (n_r, ...)
        This rank's rows; ``n_r`` may differ between ranks (trailing shape and dtype may not).

    Returns
    -------
    np.ndarray, shape (sum of n_r, ...)
    """
    if not world.distributed:
        return part
    local = torch.from_numpy(np.ascontiguousarray(part)).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world.size)]
    dist.all_gather(sizes, torch.tensor([len(part)], dtype=torch.int64, device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *part.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(part)] = local
    gathered = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(gathered, padded)
    return np.concatenate([g[: int(n.item())].cpu().numpy() for g, n in zip(gathered, sizes, strict=True)])


def gather_objects(value, world: World) -> list:
    """Every rank's ``value`` (picklable), as a list in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def sum_over_ranks(values: list[float], world: World, device: torch.device) -> list[float]:
    """Each of ``values`` summed over the ranks (float64), on every rank."""
    if not world.distributed:
        return [float(v) for v in values]
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


_TRANSPORT_WORDS = ("gloo", "nccl", "NCCL", "Connection closed", "Connection reset", "Timed out", "timed out")


@contextmanager
def collective_errors(world: World, timeout_s: float):
    """Turn a failed collective into :class:`DistributedError` with what happened and what to do."""
    try:
        yield
    except RuntimeError as exc:
        transport = isinstance(exc, dist.DistError) or any(w in str(exc) for w in _TRANSPORT_WORDS)
        if not world.distributed or not transport or isinstance(exc, DistributedError):
            raise
        raise DistributedError(
            f"rank {world.rank} of {world.size}: a collective with the other ranks failed: another rank "
            f"died, or did not answer within --dist-timeout {timeout_s:g} s ({str(exc).strip()[:300]}). "
            f"torchrun's summary names the rank that failed first; rerun the same command with --resume "
            f"to continue from the last completed epoch (RUN/last.pt)"
        ) from exc
