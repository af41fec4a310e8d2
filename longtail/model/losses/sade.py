"""SADE / TADE expert losses (docs/methods.md, SADE): a forward, a uniform and a backward expert with fixed roles."""
from __future__ import annotations

from typing import Sequence

import torch

from longtail.model.losses.base import ExpertLoss, LossOutput, at_least_fp32, expert_cross_entropy, training_prior
from longtail.registry import LOSSES
from longtail.utils.errors import ConfigError

SADE_NUM_EXPERTS = 3


def inverse_prior(prior: torch.Tensor) -> torch.Tensor:
    """The prior's values permuted by rank: the class with the k-th largest prior gets the k-th smallest value.

    Ties are broken by class index (stable sort), so for a non-increasing profile (class 0 = head, as every LT
    profile here) the result is exactly the reversed prior ``prior.flip(0)``. The reference used an unstable sort,
    which permutes tied tail classes arbitrarily.
    """
    order = torch.sort(prior, descending=True, stable=True).indices  # classes from the largest prior down
    values = prior[order]
    inverse = torch.empty_like(prior)
    inverse[order] = values.flip(0)
    return inverse


class SADELoss(ExpertLoss):
    """Sum of CE(z1, y) + CE(z2 + log pi, y) + CE(z3 + log pi - tau * log pi_inv, y) over the three experts.

    Expert 1 learns the long-tailed (training) posterior, expert 2 the balanced one, expert 3 the posterior under
    the inverse prior pi_inv ** tau. The log priors are buffers (device-agnostic, saved with the loss).
    """

    def __init__(self, cls_num_list: Sequence[int], tau: float = 2.0, eps: float = 1e-9) -> None:
        super().__init__()
        prior = training_prior(cls_num_list)
        log_prior = torch.log(prior + eps)
        log_inverse = torch.log(inverse_prior(prior) + eps)
        # additive logit adjustment of each expert, (E, C)
        adjustment = torch.stack([torch.zeros_like(log_prior), log_prior, log_prior - tau * log_inverse])
        self.register_buffer("adjustment", adjustment.float())
        self.tau = tau

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        if logits.dim() != 3 or logits.shape[1] != SADE_NUM_EXPERTS:
            raise ValueError(f"the 'sade' loss needs per-expert logits of shape (B, 3, C), got {tuple(logits.shape)}; "
                             "set arch.args.num_experts=3")
        per_expert = expert_cross_entropy(at_least_fp32(logits) + self.adjustment[None], target)
        return LossOutput(per_expert.sum(), per_expert)


@LOSSES.register("sade")
def sade_loss(cls_num_list: list[int], num_experts: int, tau: float = 2.0, eps: float = 1e-9) -> SADELoss:
    """SADE/TADE: forward (plain CE), uniform (balanced softmax) and backward (inverse-prior) experts, summed."""
    if num_experts != SADE_NUM_EXPERTS:
        raise ConfigError(f"loss 'sade' has exactly 3 experts (forward, uniform, backward) but the model has "
                          f"{num_experts}; set arch.args.num_experts=3")
    return SADELoss(cls_num_list, tau, eps)
