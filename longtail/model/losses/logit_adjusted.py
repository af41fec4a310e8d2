"""Logit-adjusted expert losses: BalPoE (one tau per expert), cross-entropy, Balanced Softmax, logit adjustment."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from longtail.model.losses.base import ExpertLoss, LossOutput, at_least_fp32, expert_cross_entropy, log_prior
from longtail.registry import LOSSES, register_cli_flag
from longtail.utils.config import parse_cli_value
from longtail.utils.errors import ConfigError


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


def expand_tau_list(spec: Any, num_experts: int, tau_min: float | None, tau_max: float | None) -> list[float]:
    """Resolve a tau_list spec (list, 'limits', 'uniform' or 'a;b;c') into one float per expert."""
    if isinstance(spec, str) and spec in ("limits", "uniform"):
        if tau_min is None or tau_max is None:
            raise ConfigError(f"tau_list '{spec}' needs loss.tau_min and loss.tau_max in the config (or --set loss.tau_min=...)")
        if spec == "limits":
            if num_experts == 1:
                return [(tau_min + tau_max) / 2.0]
            return [tau_min + (tau_max - tau_min) * i / (num_experts - 1) for i in range(num_experts)]
        return [tau_min + (tau_max - tau_min) * (i + 0.5) / num_experts for i in range(num_experts)]
    if isinstance(spec, str):
        items = spec.replace(",", ";").split(";")
        empty = [i + 1 for i, v in enumerate(items) if not v.strip()]
        if empty and spec.strip():
            raise ConfigError(f"tau_list {spec!r}: item {empty[0]} is empty; give numbers separated by ',' or ';'")
        try:
            spec = [float(v) for v in items if v.strip()]
        except ValueError:
            raise ConfigError(f"tau_list {spec!r} is not 'limits', 'uniform' or numbers separated by ';' or ','") from None
    if not isinstance(spec, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
        raise ConfigError(f"loss.args.tau_list must be a list of numbers, 'limits' or 'uniform', got {spec!r}")
    if len(spec) != num_experts:
        raise ConfigError(
            f"loss.args.tau_list has {len(spec)} values but arch.args.num_experts is {num_experts}; "
            "give one tau per expert or use --tau_list limits"
        )
    return [float(v) for v in spec]


def resolve_balpoe_block(block: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Turn ``loss.args.tau_list`` ('limits', 'uniform', 'a;b;c' or a list) into one number per expert, once, when
    the config is resolved (the run directory's config.json then holds the numbers)."""
    args = block["args"]
    if "tau_list" in args:
        num_experts = config.get("arch", {}).get("args", {}).get("num_experts", 1)
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ConfigError(f"arch.args.num_experts must be an integer >= 1, got {num_experts!r}")
        args = {**args, "tau_list": expand_tau_list(args["tau_list"], num_experts, block.get("tau_min"),
                                                    block.get("tau_max"))}
    return {**block, "args": args}


@LOSSES.register("balpoe")
def balpoe_loss(cls_num_list: list[int], num_experts: int, tau_list: list[float] | str = "limits",
                eps: float = 1e-9) -> LogitAdjustedExpertLoss:
    """BalPoE: expert e is trained with logit adjustment tau_e; mean(tau_list) = 1 makes the ensemble balanced."""
    if isinstance(tau_list, str):
        tau_list = expand_tau_list(tau_list, num_experts, None, None)  # a list string; 'limits' needs tau_min/max
    return LogitAdjustedExpertLoss(cls_num_list, tau_list, eps)


balpoe_loss.config_siblings = ("tau_min", "tau_max")  # type: ignore[attr-defined]  (range of 'limits' / 'uniform')
balpoe_loss.resolve_block = resolve_balpoe_block  # type: ignore[attr-defined]
register_cli_flag(["--tau_list"], ("train",), lambda args, value: [("loss.args.tau_list", parse_cli_value(value))],
                  help="BalPoE's per-expert taus: '0,1,2', 'limits' or 'uniform' (evenly spaced in "
                       "[loss.tau_min, loss.tau_max])")


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
