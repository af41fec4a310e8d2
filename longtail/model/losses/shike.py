"""SHIKE (Jin et al., CVPR 2023, "Self-Heterogeneous Integration with Knowledge Excavation"): decoupled knowledge
distillation between experts (docs/methods.md, SHIKE). The depth-wise knowledge fusion backbone, its schedule and the
classifier re-training stage are in methods/shike.py.

For experts e = 1..E with logits z_e (B, C), one-hot targets Y and the mean logits zbar:

    L = sum_e [ CE(z_e, y)
                + hns * KL_m( softmax(r) || softmax(z_e * (1 - Y) + mask_logit * Y) )   hardest negative suppression
                + sum_{j != e} KL_m( softmax(z_j) || softmax(z_e) ) ]                    mutual distillation
    r_c = 0 for the true class, zbar_c for the hardest negative h = argmax_{c != y} zbar_c, max_e z_{e,c} otherwise

KL_m is PyTorch's ``kl_div`` with its default reduction 'mean': the element-wise KL averaged over B*C entries (not
over the batch), and no side of any KL is detached (gradients reach the teacher terms too). Both follow the
official code (jinyan-06/SHIKE, cifarTrain.py, mix_outputs), including the true class's logit 0 in r and the
mask_logit = -30 of the student's excluded true class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from longtail.model.losses.base import ExpertLoss, LossOutput, as_expert_logits
from longtail.registry import LOSSES


def elementwise_mean_kl(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum p (log p - log q) / numel: ``F.kl_div(log_q, p)`` with the default 'mean' reduction (both sides differentiable)."""
    return (torch.xlogy(p, p) - p * log_q).mean()


def suppression_target(z: torch.Tensor, target: torch.Tensor, mask_logit: float) -> torch.Tensor:
    """r (B, C): 0 at the true class, the mean logit at the hardest negative, the experts' max logit elsewhere."""
    one_hot = F.one_hot(target, z.shape[-1]).to(z.dtype)
    mean, best = z.mean(dim=1), z.max(dim=1).values
    non_target = mask_logit * one_hot + mean * (1 - one_hot)  # the true class pushed to mask_logit
    hardest = F.one_hot(non_target.argmax(dim=1), z.shape[-1]).to(z.dtype)
    return non_target * hardest + best * (1 - hardest) * (1 - one_hot)


class SHIKELoss(ExpertLoss):
    """CE + hardest negative suppression + mutual distillation, summed over experts (module docstring)."""

    def __init__(self, hns_weight: float, mutual_weight: float, mask_logit: float) -> None:
        super().__init__()
        self.hns_weight, self.mutual_weight, self.mask_logit = hns_weight, mutual_weight, mask_logit

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        z = as_expert_logits(logits)
        num_experts = z.shape[1]
        one_hot = F.one_hot(target, z.shape[-1]).to(z.dtype)
        teacher = F.softmax(suppression_target(z, target, self.mask_logit), dim=1)
        probs = [F.softmax(z[:, e], dim=1) for e in range(num_experts)]
        terms = []
        for e in range(num_experts):
            student = F.log_softmax(z[:, e] * (1 - one_hot) + self.mask_logit * one_hot, dim=1)
            term = F.cross_entropy(z[:, e], target) + self.hns_weight * elementwise_mean_kl(student, teacher)
            log_e = F.log_softmax(z[:, e], dim=1)
            for j in range(num_experts):
                if j != e:
                    term = term + self.mutual_weight * elementwise_mean_kl(log_e, probs[j])
            terms.append(term)
        per_expert = torch.stack(terms)
        return LossOutput(per_expert.sum(), per_expert)


@LOSSES.register("shike")
def shike_loss(hns_weight: float = 10.0, mutual_weight: float = 1.0, mask_logit: float = -30.0) -> SHIKELoss:
    """SHIKE's decoupled knowledge distillation: CE + hns_weight * hardest-negative suppression + mutual KL between
    the experts (official weights 10 and 1; mask_logit: the excluded true class's logit, -s of the cosine heads)."""
    return SHIKELoss(hns_weight, mutual_weight, mask_logit)
