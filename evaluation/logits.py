"""One forward pass over a test loader: per-expert logits of every image (and per-sample extras such as the
number of experts a router used)."""
from __future__ import annotations

import torch
import torch.nn as nn

from data_loader.loader import BatchLoader
from utils.device import autocast_context


@torch.inference_mode()
def collect_logits(model: nn.Module, loader: BatchLoader, amp: str = "off",
                   extras: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert logits (N, E, C) as float32 and the targets (N,), in one pass over ``loader``, left on the
    loader's device: every test prior is then an index subset evaluated there (no host copy of the logits).

    When ``extras`` is a dict, the model's ``per_sample_outputs`` (declared by its extensions) are stored in it
    (tensors of length N on the same device).
    """
    model.eval()
    keys = tuple(getattr(model, "per_sample_outputs", ())) if extras is not None else ()
    chunks, targets = [], []
    kept: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    for images, target in loader.batches(0):
        with autocast_context(loader.device, amp):
            out = model(images)
        chunks.append(out["logits"].float())
        targets.append(target)
        for key in keys:
            if key in out:
                kept[key].append(out[key])
    if extras is not None:
        extras.update({key: torch.cat(values) for key, values in kept.items() if values})
    return torch.cat(chunks), torch.cat(targets)
