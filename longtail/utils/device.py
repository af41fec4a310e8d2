"""Devices: parsing the -d flag, waiting for queued GPU work, mixed-precision contexts."""
from __future__ import annotations

import contextlib
import os

import torch

from longtail.utils.errors import ConfigError


def resolve_device(device: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or a GPU list '0,1' (sets CUDA_VISIBLE_DEVICES); default: GPU when available."""
    if device and all(part.strip().isdigit() for part in device.split(",")):
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        device = "cuda"
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"-d/--device {device!r} is not a device: use cpu, cuda, cuda:N or a GPU list like 0,1") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ConfigError(f"-d/--device {device!r}: only cpu and cuda devices are supported (use -d cpu, cuda, cuda:N "
                          "or a GPU list like 0,1)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but no CUDA GPU is visible; use -d cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) are visible "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return parsed


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are complete (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``trainer.amp`` on ``device``: 'auto' means bf16 autocast on a GPU that supports it and fp32 elsewhere (CPUs
    without native bf16 arithmetic run it emulated, several times slower)."""
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "off"


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """torch.autocast for 'bf16' / 'fp16' (and 'auto' where it means bf16), a no-op context for 'off'."""
    amp = resolve_amp(amp, device)
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def usable_cpus() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota (containers, SLURM)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """Intra-op threads for this process and why: ``requested`` (--threads), else OMP_NUM_THREADS, else the usable
    cores minus those other processes keep busy (1-minute load average). On a shared CPU, PyTorch's default of one
    thread per core makes competing processes stall each other (5-40x slower training, measured on 2 cores)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads must be >= 1, got {requested}")
        return requested, "--threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    cpus = usable_cpus()
    busy = int(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    threads = max(1, cpus - min(busy, cpus - 1))
    return threads, f"{cpus} usable core(s), load average {busy}"


def set_threads(requested: int | None = None) -> str:
    """Apply :func:`choose_threads` to torch (intra-op) and return the line a run prints at start."""
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    return f"CPU threads: {threads} ({why}; set with --threads)"
