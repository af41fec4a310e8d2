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
