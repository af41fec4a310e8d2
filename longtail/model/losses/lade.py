"""LADE (Hong et al., CVPR 2021, "Disentangling Label Distribution for Long-tailed Visual Recognition").

Per expert e, with training prior pi and batch logits z (B, C):

    L_e = CE(z + log pi, y)  +  alpha * L_LADER(z)          (PC-softmax cross-entropy + LADE regulariser)

    L_LADER(z) = - sum_c pi_c * [ first_c - second_c - lambda * second_c^2 ]
    first_c    = sum_{i: y_i = c} z_ic / (n_c(batch) + 1e-8)                       (0 when c is not in the batch)
    second_c   = log( (1/B) sum_i exp(z_ic - log pi_c + log(1/C)) )

so z estimates the balanced (uniform-prior) log-likelihood ratio; at test time the plain logits target the uniform
prior and ``--posthoc_bias_correction`` re-targets them to a known or estimated test prior (docs/methods.md, LADE).
The total is the mean of L_e over experts (E = 1: the paper's single model). Defaults alpha = 0.1 and
lambda = 0.01 are LADE's CIFAR-100-LT settings.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from longtail.model.losses.base import ExpertLoss, LossOutput, as_expert_logits, expert_cross_entropy, training_prior
from longtail.registry import LOSSES


def lade_regularizer(logits: torch.Tensor, target: torch.Tensor, prior: torch.Tensor, remine_lambda: float) -> torch.Tensor:
    """L_LADER of one model: logits (B, C), target (B,), training prior (C,) -> scalar."""
    batch, num_classes = logits.shape
    onehot = torch.nn.functional.one_hot(target, num_classes).to(logits.dtype)  # (B, C)
    first = (logits * onehot).sum(dim=0) / (onehot.sum(dim=0) + 1e-8)
    shifted = logits - torch.log(prior + 1e-9) + math.log(1.0 / num_classes)
    second = torch.logsumexp(shifted, dim=0) - math.log(batch)
    estimate = first - second - remine_lambda * second ** 2
    return -(prior * estimate).sum()


class LADELoss(ExpertLoss):
    """PC-softmax CE + alpha * LADE regulariser per expert, averaged over experts."""

    def __init__(self, cls_num_list: Sequence[int], alpha: float, remine_lambda: float) -> None:
        super().__init__()
        prior = training_prior(cls_num_list)
        self.alpha, self.remine_lambda = alpha, remine_lambda
        self.register_buffer("prior", prior.float())
        self.register_buffer("log_prior", torch.log(prior + 1e-9).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        z = as_expert_logits(logits)
        ce = expert_cross_entropy(z + self.log_prior, target)
        regularizer = torch.stack([lade_regularizer(z[:, e], target, self.prior, self.remine_lambda)
                                   for e in range(z.shape[1])])
        per_expert = ce + self.alpha * regularizer
        return LossOutput(per_expert.mean(), per_expert)


@LOSSES.register("lade")
def lade_loss(cls_num_list: list[int], alpha: float = 0.1, remine_lambda: float = 0.01) -> LADELoss:
    """LADE: PC-softmax cross-entropy + alpha * LADE regulariser (remine_lambda: its second-moment penalty)."""
    return LADELoss(cls_num_list, alpha, remine_lambda)
