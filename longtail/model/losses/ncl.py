"""NCL (Li et al., CVPR 2022, "Nested Collaborative Learning"): nested individual learning + nested balanced online
distillation between experts (docs/methods.md, NCL).

Notation: z_e (B, C) the logits of expert e, n_c the training count of class c, b_e = z_e + log n_c the balanced
(Balanced Softmax) logits, M the hard-category mask of each sample: 1 on the ``hcm_n`` classes with the largest
logits of expert 0 (the true class always included), 0 elsewhere.

    L = ce_ratio  * sum_e CE(b_e, y)                          individual learning, all classes
      + hcm_ratio * sum_e CE(b_e * M, y)                      individual learning, hard categories
      + NBOD(b; alpha) + NBOD(b * M; beta)                    online distillation, all / hard categories
    NBOD(x; a) = a / (E - 1) * sum_{i != j} KL(softmax(x_j) || softmax(x_i))   (batch mean, 0 for one expert)

As the official code (Bazinga699/NCL, lib/loss/loss.py, NIL_NBOD): the hard-category logits are the balanced logits
multiplied by the 0/1 mask (the other classes keep logit 0 instead of leaving the softmax), log n_c uses the raw
counts (not the prior: the constant matters once the mask zeroes logits), the mask is ranked by expert 0's raw logits,
log-probabilities in the KL are log(softmax + 1e-9), and both sides of every KL receive gradients (mutual learning:
no detach).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from longtail.model.losses.base import ExpertLoss, LossOutput, as_expert_logits
from longtail.registry import LOSSES
from longtail.utils.errors import ConfigError


def hard_category_mask(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C) 0/1 mask of the ``k`` classes with the largest ``logits`` per sample, the true class always among them."""
    forced = logits.detach().scatter(1, target[:, None], torch.finfo(logits.dtype).max)
    top = forced.topk(min(k, logits.shape[1]), dim=1).indices
    return torch.zeros_like(logits).scatter(1, top, 1.0)


def mutual_kl(logits: Sequence[torch.Tensor], factor: float) -> torch.Tensor:
    """factor / (E - 1) * sum_{i != j} KL(p_j || p_i), p = softmax, log p = log(p + 1e-9), batch mean; both sides
    carry gradients. Zero for a single expert."""
    if len(logits) < 2:
        return logits[0].new_zeros(())
    probs = [F.softmax(z, dim=1) for z in logits]
    logs = [torch.log(p + 1e-9) for p in probs]
    total = sum(F.kl_div(logs[i], probs[j], reduction="batchmean")
                for i in range(len(logits)) for j in range(len(logits)) if i != j)
    return factor * total / (len(logits) - 1)


class NCLLoss(ExpertLoss):
    """NIL + NBOD of NCL on E experts (see the module docstring)."""

    def __init__(self, cls_num_list: Sequence[int], hcm_n: int, alpha: float, beta: float, ce_ratio: float,
                 hcm_ratio: float) -> None:
        super().__init__()
        if hcm_n < 1:
            raise ConfigError(f"loss.args.hcm_n (hard categories per sample) must be >= 1, got {hcm_n}")
        counts = torch.as_tensor(list(cls_num_list), dtype=torch.float32)
        if (counts <= 0).any():
            raise ConfigError("NCL's balanced logits need every class in the training set (a class count is 0)")
        self.register_buffer("log_counts", counts.log())
        self.hcm_n, self.alpha, self.beta, self.ce_ratio, self.hcm_ratio = hcm_n, alpha, beta, ce_ratio, hcm_ratio

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        z = as_expert_logits(logits)
        mask = hard_category_mask(z[:, 0], target, self.hcm_n)
        balanced = [z[:, e] + self.log_counts for e in range(z.shape[1])]
        hard = [b * mask for b in balanced]
        per_expert = torch.stack([self.ce_ratio * F.cross_entropy(b, target) + self.hcm_ratio * F.cross_entropy(h, target)
                                  for b, h in zip(balanced, hard)])
        total = per_expert.sum() + mutual_kl(balanced, self.alpha) + mutual_kl(hard, self.beta)
        return LossOutput(total, per_expert)


@LOSSES.register("ncl")
def ncl_loss(cls_num_list: list[int], hcm_n: int = 30, alpha: float = 0.6, beta: float = 0.6, ce_ratio: float = 1.0,
             hcm_ratio: float = 1.0) -> NCLLoss:
    """NCL: balanced CE + hard-category CE per expert, mutual KL between experts on all and on the hard categories
    (hcm_n: HCM_N, alpha/beta: DIVERSITY_FACTOR / DIVERSITY_FACTOR_HCM of the official configs)."""
    return NCLLoss(cls_num_list, hcm_n, alpha, beta, ce_ratio, hcm_ratio)
