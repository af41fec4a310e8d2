"""Single-model long-tail baselines on per-expert logits (B, E, C): re-weighted CE, focal loss, LDAM-DRW.

With E > 1 experts every loss is applied to each expert independently and the total is the MEAN over experts (the
per-expert values are returned for logging), so E = 1 gives the reference single-model losses exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from longtail.model.losses.base import (ExpertLoss, LossOutput, as_expert_logits, effective_number_weights, ldam_margins,
                               subtract_margin, weighted_expert_cross_entropy)
from longtail.registry import LOSSES


class ReweightedCrossEntropy(ExpertLoss):
    """Mean over experts of the class-weighted cross-entropy (weighted mean over the batch)."""

    def __init__(self, class_weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        per_expert = weighted_expert_cross_entropy(as_expert_logits(logits), target, self.class_weights)
        return LossOutput(per_expert.mean(), per_expert)


class FocalLoss(ExpertLoss):
    """Focal loss (Lin et al. 2017) per expert: mean_i w_{y_i} (1 - p_i)^gamma CE_i, averaged over experts.

    Unlike the reference ``FocalLoss`` (docs/methods.md, focal loss), p_i is the true probability exp(-CE_i) of the unweighted CE;
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


class LDAMLoss(ExpertLoss):
    """LDAM (Cao et al. 2019) with deferred re-weighting, per expert, averaged over experts (docs/methods.md, LDAM-DRW).

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
