"""What every loss shares: the output type, the loss protocol and per-expert cross-entropy helpers.

A loss takes per-expert logits (B, E, C) and targets (B,) and returns :class:`LossOutput`. Losses that need more
model outputs (a teacher's output, router logits) name them in ``extra_inputs``: the training step passes those
outputs as keyword arguments, and the builder checks before any work that the model or a config section provides
them. ``on_epoch_start(epoch)`` is called at the start of every training epoch (deferred re-weighting).
A loss that compares several augmented views of each image (consistency, contrastive) sets ``num_views`` = k: its
batch then holds k*B rows, view by view (data_loader/multiview.py), and the builder checks that the training
augmentation makes exactly k views.
"""
from __future__ import annotations

from typing import ClassVar, NamedTuple, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class LossOutput(NamedTuple):
    """Scalar training loss plus optional per-expert terms (E,) for logging."""

    total: torch.Tensor
    per_expert: torch.Tensor | None = None


class ExpertLoss(nn.Module):
    """Base class of the registered losses (docs/extending.md): buffers follow the device and are checkpointed."""

    extra_inputs: ClassVar[tuple[str, ...]] = ()
    num_views: int = 1  # views of every image the loss reads from a batch (k > 1: a multi_view augmentation)

    def on_epoch_start(self, epoch: int) -> None:
        """Per-epoch schedule of the loss (1-based epoch); nothing by default."""


def training_prior(cls_num_list: Sequence[int]) -> torch.Tensor:
    """pi_c = n_c / N as float64."""
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    return counts / counts.sum()


def log_prior(cls_num_list: Sequence[int], eps: float = 1e-9) -> torch.Tensor:
    """log(pi_c + eps) with pi_c = n_c / N, the training class prior."""
    return torch.log(training_prior(cls_num_list) + eps).float()


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bfloat16 (autocast outputs) to float32; keep float32/float64 as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def as_expert_logits(logits: torch.Tensor) -> torch.Tensor:
    """Accept (B, C) single-model logits as (B, 1, C); returns (B, E, C) in at least float32."""
    return at_least_fp32(logits.unsqueeze(1) if logits.dim() == 2 else logits)


def weighted_expert_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert CE (E,), as PyTorch's weighted CE: sum_i w_{y_i} CE_i / sum_i w_{y_i} (plain mean without weights)."""
    b, e, c = logits.shape
    per_sample = F.cross_entropy(logits.reshape(b * e, c), target.repeat_interleave(e), reduction="none").view(b, e)
    if weight is None:
        return per_sample.mean(dim=0)
    w = weight[target][:, None]
    return (w * per_sample).sum(dim=0) / w.sum()


def expert_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch-mean cross-entropy of each expert: logits (B, E, C), target (B,) -> (E,)."""
    return weighted_expert_cross_entropy(at_least_fp32(logits), target)


def effective_number_weights(cls_num_list: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights (Cui et al. 2019): w_c = (1 - beta) / (1 - beta^n_c), renormalised to sum to C."""
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError(f"class-balanced weights need n_c > 0 for every class, got counts {counts.tolist()}")
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights * len(counts) / weights.sum()).float()


def ldam_margins(cls_num_list: Sequence[int], max_m: float = 0.5) -> torch.Tensor:
    """LDAM margins m_c = max_m * n_c^(-1/4) / max_j n_j^(-1/4): the rarest class gets ``max_m``."""
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    margins = counts.pow(-0.25)
    return (margins * (max_m / margins.max())).float()


def subtract_margin(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, scale: float) -> torch.Tensor:
    """LDAM: subtract ``scale * m_y`` from the true-class logit of every expert; logits (B, E, C), target (B,)."""
    shift = F.one_hot(target, logits.shape[-1]).to(logits.dtype) * (scale * margins[target])[:, None]
    return logits - shift[:, None, :]
