"""DistributedDataParallel from torchrun's environment: process group, device, SyncBatchNorm, collective helpers.

Launch: ``torchrun --nproc_per_node=G train.py -c CONFIG`` (one node) or with ``--nnodes N --node_rank i
--rdzv_backend c10d --rdzv_endpoint HOST:PORT`` on every node; or, on a SLURM cluster, ``srun`` with one task per GPU
on any number of nodes (``sbatch --nodes N --ntasks-per-node G``; ``lt-sweep --launcher slurm`` does this): every
task reads its rank from SLURM's variables and meets the others at the first node of the job step
(:func:`slurm_environment`). ``data_loader.args.batch_size`` is the GLOBAL batch
of one optimizer step (each process takes batch_size / world_size), so the configured learning rate applies
unchanged for any number of processes. Only rank 0 logs, validates and writes checkpoints. Without torchrun,
``python train.py`` starts the processes itself (one per GPU for ``n_gpu > 1``, or ``--nproc N``; see
:func:`processes_to_start`), with the same environment torchrun would give them.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from longtail.model.layers import ExpertBatchNorm2d


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


SLURM_PORT_RANGE = (20000, 60000)  # rendezvous port of a SLURM job step: derived from the job id (same on every task)


def first_slurm_host(nodelist: str) -> str:
    """The first host name of a SLURM host list: 'gpu[07-09,12],cpu3' -> 'gpu07', 'node1,node2' -> 'node1'."""
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\])?([^,]*)", nodelist.strip())
    if not match or not (match.group(1) or match.group(2)):
        raise ValueError(f"cannot read a host name from the SLURM node list {nodelist!r}")
    prefix, ranges, suffix = match.groups()
    return prefix + (re.split(r"[,-]", ranges)[0] if ranges else "") + suffix


def slurm_environment(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """torchrun's variables for one task of a multi-task SLURM job step (``srun`` with several tasks: one process per
    GPU, on one or several nodes); empty outside such a step and under torchrun.

    Rank, local rank and world size are SLURM's task numbers; the rendezvous is the first node of the step at a port
    derived from the job id (MASTER_PORT, when set, wins). Only job steps count: a batch script or an ``salloc``
    shell has SLURM_NTASKS too, but not SLURM_STEP_NUM_TASKS, and must stay a single process."""
    tasks = env.get("SLURM_STEP_NUM_TASKS", "")
    if "RANK" in env or not tasks.isdigit() or int(tasks) <= 1:
        return {}
    low, high = SLURM_PORT_RANGE
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    return {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "WORLD_SIZE": tasks,
            "MASTER_ADDR": env.get("MASTER_ADDR") or first_slurm_host(nodes),
            "MASTER_PORT": env.get("MASTER_PORT") or str(low + int(env.get("SLURM_JOB_ID", "0")) % (high - low))}


def context_from_env(env: Mapping[str, str] = os.environ) -> DistContext:
    """Read RANK / LOCAL_RANK / WORLD_SIZE as set by torchrun, or a SLURM job step's task numbers (absent: a single
    process)."""
    env = {**slurm_environment(env), **env}
    try:
        return DistContext(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))
    except ValueError:
        raise ValueError("RANK, LOCAL_RANK and WORLD_SIZE must be integers (launch distributed runs with torchrun)") from None


def free_port() -> int:
    """An unused TCP port on this machine for the process group's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for process ``rank`` of a one-node job."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def processes_to_start(config: dict, device: torch.device, requested: int | None = None,
                       env: Mapping[str, str] = os.environ) -> int:
    """How many DDP processes a plain ``python train.py`` starts: ``requested`` (--nproc), else one per GPU for
    ``n_gpu > 1`` on a machine with several GPUs (unless ``trainer.parallel`` is data_parallel); 1 inside a job that
    torchrun (or this launcher) started."""
    if context_from_env(env).is_distributed:
        return 1
    if requested:
        return requested
    if device.type != "cuda" or config["trainer"].get("parallel", "ddp") != "ddp":
        return 1
    return max(1, min(int(config.get("n_gpu", 1)), torch.cuda.device_count()))


def init_distributed(device: torch.device, env: Mapping[str, str] = os.environ) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun: NCCL with one GPU per process, gloo on CPU."""
    ctx = context_from_env(env)
    if not ctx.is_distributed:
        return ctx, device
    if env is os.environ:  # a SLURM task: the process group reads the rendezvous from the environment
        os.environ.update(slurm_environment(env))
    if device.type == "cuda":  # a task bound to its own GPU by SLURM sees that GPU alone
        device = torch.device("cuda", ctx.local_rank % max(1, torch.cuda.device_count()))
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
