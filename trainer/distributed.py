"""DistributedDataParallel from torchrun's environment: process group, device, SyncBatchNorm, collective helpers.

Launch: ``torchrun --nproc_per_node=G train.py -c CONFIG`` (one node) or with ``--nnodes N --node_rank i
--rdzv_backend c10d --rdzv_endpoint HOST:PORT`` on every node. ``data_loader.args.batch_size`` is the GLOBAL batch
of one optimizer step (each process takes batch_size / world_size), so the configured learning rate applies
unchanged for any number of processes. Only rank 0 logs, validates and writes checkpoints.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from model.layers import ExpertBatchNorm2d


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        """The process that logs, validates and checkpoints."""
        return self.rank == 0


def context_from_env(env: Mapping[str, str] = os.environ) -> DistContext:
    """Read RANK / LOCAL_RANK / WORLD_SIZE as set by torchrun (absent: a single process)."""
    try:
        return DistContext(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
    except ValueError:
        raise ValueError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (launch distributed runs with torchrun)") from None


def init_distributed(device: torch.device, env: Mapping[str, str] = os.environ) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun: NCCL with one GPU per process, gloo on CPU."""
    ctx = context_from_env(env)
    if not ctx.is_distributed:
        return ctx, device
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ctx.rank, world_size=ctx.world_size)
    return ctx, device


def shutdown_distributed() -> None:
    """Leave the process group (no-op for single-process runs)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around the bare model (gradients are averaged over processes)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Make every BatchNorm compute its batch statistics over all processes (expert BN layers and torch BN)."""
    for module in model.modules():
        if isinstance(module, ExpertBatchNorm2d):
            module.sync = True
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is True on at least one (a collective: all ranks must call it)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of a tensor over all processes (identity without a process group)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
