"""Single-model long-tail baselines on per-expert logits (B, E, C): re-weighted CE, focal loss, LDAM-DRW.

With E > 1 experts every loss is applied to each expert independently and the total is the MEAN over experts (the
per-expert values are returned for logging), so E = 1 gives the reference single-model losses exactly.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.loss import LossOutput, at_least_fp32
from model.registry import LOSSES


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


def as_expert_logits(logits: torch.Tensor) -> torch.Tensor:
    """Accept (B, C) single-model logits as (B, 1, C); returns (B, E, C) in at least float32."""
    return at_least_fp32(logits.unsqueeze(1) if logits.dim() == 2 else logits)


def subtract_margin(logits: torch.Tensor, target: torch.Tensor, margins: torch.Tensor, scale: float) -> torch.Tensor:
    """LDAM: subtract ``scale * m_y`` from the true-class logit of every expert; logits (B, E, C), target (B,)."""
    shift = F.one_hot(target, logits.shape[-1]).to(logits.dtype) * (scale * margins[target])[:, None]
    return logits - shift[:, None, :]


def weighted_expert_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-expert CE (E,), as PyTorch's weighted CE: sum_i w_{y_i} CE_i / sum_i w_{y_i} (plain mean without weights)."""
    b, e, c = logits.shape
    per_sample = F.cross_entropy(logits.reshape(b * e, c), target.repeat_interleave(e), reduction="none").view(b, e)
    if weight is None:
        return per_sample.mean(dim=0)
    w = weight[target][:, None]
    return (w * per_sample).sum(dim=0) / w.sum()


class ReweightedCrossEntropy(nn.Module):
    """Mean over experts of the class-weighted cross-entropy (weighted mean over the batch)."""

    def __init__(self, class_weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        per_expert = weighted_expert_cross_entropy(as_expert_logits(logits), target, self.class_weights)
        return LossOutput(per_expert.mean(), per_expert)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) per expert: mean_i w_{y_i} (1 - p_i)^gamma CE_i, averaged over experts.

    Unlike the reference ``FocalLoss`` (METHODS.md §3.2), p_i is the true probability exp(-CE_i) of the unweighted CE;
    the optional class weight multiplies the focal term afterwards. The batch reduction is a plain mean, as there.
    """

    def __init__(self, gamma: float, class_weights: torch.Tensor | None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        z = as_expert_logits(logits)
        b, e, c = z.shape
        ce = F.cross_entropy(z.reshape(b * e, c), target.repeat_interleave(e), reduction="none").view(b, e)
        focal = (1.0 - torch.exp(-ce)).pow(self.gamma) * ce
        if self.class_weights is not None:
            focal = focal * self.class_weights[target][:, None]
        per_expert = focal.mean(dim=0)
        return LossOutput(per_expert.mean(), per_expert)


class LDAMLoss(nn.Module):
    """LDAM (Cao et al. 2019) with deferred re-weighting, per expert, averaged over experts (METHODS.md §3.3).

    The network already outputs ``s * cos`` (cosine head), so the margin is subtracted as ``s * m_y``. With
    ``reweight_epoch = k >= 0`` the class-balanced weights are used from epoch k + 1 on (1-based, via
    :meth:`on_epoch_start`); ``k = -1`` never re-weights (plain LDAM).
    """

    def __init__(self, margins: torch.Tensor, class_weights: torch.Tensor, scale: float, reweight_epoch: int) -> None:
        super().__init__()
        self.scale, self.reweight_epoch = scale, reweight_epoch
        self.register_buffer("margins", margins)
        self.register_buffer("class_weights", class_weights)
        self.reweighting = False

    def on_epoch_start(self, epoch: int) -> None:
        """Deferred re-weighting switch: on for epochs > reweight_epoch (never when reweight_epoch is -1)."""
        self.reweighting = self.reweight_epoch >= 0 and epoch > self.reweight_epoch

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        shifted = subtract_margin(as_expert_logits(logits), target, self.margins, self.scale)
        per_expert = weighted_expert_cross_entropy(shifted, target, self.class_weights if self.reweighting else None)
        return LossOutput(per_expert.mean(), per_expert)


@LOSSES.register("ce_reweight")
def ce_reweight_loss(cls_num_list: list[int], beta: float = 0.9999) -> ReweightedCrossEntropy:
    """Cross-entropy with class-balanced "effective number" weights (beta 0.9999, renormalised to sum C)."""
    return ReweightedCrossEntropy(effective_number_weights(cls_num_list, beta))


@LOSSES.register("focal")
def focal_loss(cls_num_list: list[int], gamma: float = 0.0, reweight: bool = False, beta: float = 0.9999) -> FocalLoss:
    """Focal loss with focusing parameter ``gamma`` (reference default 0 = CE); ``reweight``: class-balanced weights."""
    return FocalLoss(gamma, effective_number_weights(cls_num_list, beta) if reweight else None)


@LOSSES.register("ldam_drw")
def ldam_drw_loss(cls_num_list: list[int], max_m: float = 0.5, s: float = 30.0, reweight_epoch: int = -1,
                  beta: float = 0.9999) -> LDAMLoss:
    """LDAM margins (max_m, scale s) with DRW class-balanced weights from epoch reweight_epoch + 1 (-1: never)."""
    return LDAMLoss(ldam_margins(cls_num_list, max_m), effective_number_weights(cls_num_list, beta), s, reweight_epoch)
