"""Multiply-accumulate counting by tracing aten ops (convolutions and matrix products) of one forward pass.

``python -m longtail.cli.flops -c CONFIG`` prints parameters and MACs per image of a config.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_call_macs(fn: Callable[[], Any]) -> int:
    """MACs of the convolutions and matrix products executed by ``fn()`` (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops() // 2)


@torch.no_grad()
def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu") -> int:
    """MACs of one forward pass on a single input of ``input_shape`` (C, H, W), in eval mode (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=device)
        return count_call_macs(lambda: model(x))
    finally:
        model.train(was_training)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())

