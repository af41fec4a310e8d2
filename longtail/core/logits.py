"""One forward pass over a test loader: per-expert logits of every image (and per-sample extras such as the
number of experts a router used), the shot-group masks and the validation metrics logged during training."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from longtail.data_loader.loader import BatchLoader
from longtail.utils.defaults import FEW_THRESHOLD, MANY_THRESHOLD
from longtail.utils.device import autocast_context
from longtail.utils.metrics import accuracy_report, negative_log_likelihood, shot_masks


@torch.inference_mode()
def collect_logits(model: nn.Module, loader: BatchLoader, amp: str = "off",
                   extras: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert logits (N, E, C) as float32 and the targets (N,), in one pass over ``loader``, left on the
    loader's device: every test prior is then an index subset evaluated there (no host copy of the logits).
    A loader with test-time views (``evaluation.views``) yields V images per target; their logits are averaged.

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
        views = images.shape[0] // max(target.shape[0], 1)  # test-time views (evaluation.views): mean of their logits
        logits = out["logits"].float()
        chunks.append(logits.view(target.shape[0], views, *logits.shape[1:]).mean(1) if views > 1 else logits)
        targets.append(target)
        for key in keys:
            if key in out:
                value = out[key]
                kept[key].append(value.view(target.shape[0], views, *value.shape[1:]).float().mean(1) if views > 1 else value)
    if extras is not None:
        extras.update({key: torch.cat(values) for key, values in kept.items() if values})
    return torch.cat(chunks), torch.cat(targets)


def masks_for(cls_num_list: Sequence[int], evaluation: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Many/medium/few class masks from training counts and the configured thresholds."""
    return shot_masks(cls_num_list, evaluation.get("many_threshold", MANY_THRESHOLD),
                      evaluation.get("few_threshold", FEW_THRESHOLD))


def validation_metrics(model: nn.Module, loader: BatchLoader, masks: dict[str, torch.Tensor], amp: str = "off") -> dict[str, float]:
    """Metrics logged during training: accuracy all/many/medium/few and CE of the mean logits on the test loader."""
    expert_logits, targets = collect_logits(model, loader, amp)
    mean_logits = expert_logits.mean(dim=1)
    report = accuracy_report(mean_logits, targets, masks)
    return {"val_accuracy": report["all"], "val_many": report["many"], "val_medium": report["medium"],
            "val_few": report["few"], "val_loss": negative_log_likelihood(mean_logits, targets)}
