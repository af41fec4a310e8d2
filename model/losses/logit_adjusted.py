"""Logit-adjusted expert losses: BalPoE (one tau per expert), cross-entropy, Balanced Softmax, logit adjustment."""
from __future__ import annotations

from typing import Sequence

import torch

from model.losses.base import ExpertLoss, LossOutput, at_least_fp32, expert_cross_entropy, log_prior
from model.registry import LOSSES
from utils.errors import ConfigError


class LogitAdjustedExpertLoss(ExpertLoss):
    """Mean over experts of CE(z_e + tau_e * log(pi + eps), y): BalPoE's expert loss (Balanced Softmax when tau=1).

    tau_e = 0 gives plain cross-entropy, tau_e = 1 balanced softmax / logit adjustment (Menon et al.). The prior and
    the taus are buffers, so they follow the module's device and are saved with it.
    """

    def __init__(self, cls_num_list: Sequence[int], tau_list: Sequence[float], eps: float = 1e-9) -> None:
        super().__init__()
        self.register_buffer("log_prior", log_prior(cls_num_list, eps))
        self.register_buffer("tau_list", torch.as_tensor(list(tau_list), dtype=torch.float32))

    @property
    def num_experts(self) -> int:
        """Number of experts this loss expects."""
        return int(self.tau_list.numel())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        if logits.dim() == 2:
            logits = logits.unsqueeze(1)
        if logits.shape[1] != self.num_experts:
            raise ValueError(f"loss has {self.num_experts} tau values but the model returned {logits.shape[1]} experts; "
                             "make loss.args.tau_list match arch.args.num_experts")
        adjusted = at_least_fp32(logits) + self.tau_list[None, :, None] * self.log_prior[None, None, :]
        per_expert = expert_cross_entropy(adjusted, target)
        return LossOutput(per_expert.mean(), per_expert)


@LOSSES.register("balpoe")
def balpoe_loss(cls_num_list: list[int], num_experts: int, tau_list: list[float] | str = "limits",
                eps: float = 1e-9) -> LogitAdjustedExpertLoss:
    """BalPoE: expert e is trained with logit adjustment tau_e; mean(tau_list) = 1 makes the ensemble balanced."""
    if isinstance(tau_list, str):
        raise ConfigError("loss.args.tau_list must be resolved to numbers before building the loss (utils.config.resolve_config)")
    return LogitAdjustedExpertLoss(cls_num_list, tau_list, eps)


@LOSSES.register("ce")
def cross_entropy_loss(cls_num_list: list[int], num_experts: int) -> LogitAdjustedExpertLoss:
    """Plain softmax cross-entropy on every expert (tau = 0)."""
    return LogitAdjustedExpertLoss(cls_num_list, [0.0] * num_experts)


@LOSSES.register("balanced_softmax")
def balanced_softmax_loss(cls_num_list: list[int], num_experts: int) -> LogitAdjustedExpertLoss:
    """Balanced Softmax (Ren et al. 2020): CE on z + log(pi) for every expert (tau = 1)."""
    return LogitAdjustedExpertLoss(cls_num_list, [1.0] * num_experts)


@LOSSES.register("logit_adjust")
def logit_adjusted_loss(cls_num_list: list[int], num_experts: int, tau: float = 1.0) -> LogitAdjustedExpertLoss:
    """Logit-adjusted loss (Menon et al. 2021): CE on z + tau * log(pi) for every expert."""
    return LogitAdjustedExpertLoss(cls_num_list, [tau] * num_experts)
