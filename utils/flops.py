"""Multiply-accumulate counting by tracing aten ops (convolutions and matrix products) of one forward pass."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...], device: str | torch.device = "cpu") -> int:
    """MACs of one forward pass on a single input of ``input_shape`` (C, H, W), in eval mode (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *input_shape, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops() // 2)
    finally:
        model.train(was_training)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
