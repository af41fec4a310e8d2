"""RIDE's expert-assignment router (METHODS.md §7.1-7.3): an optional component of the one MultiExpertModel.

A config adds it with a sibling block of the architecture, on any multi-expert backbone:
``"arch": {"type": "resnet32", "args": {...}, "router": {"type": "ride", "args": {"top_k": 30, "threshold": 0.5}}}``.
Its parameters live under ``router.`` so a stage-1 checkpoint loads unchanged (init_from) and everything else can be
frozen with ``init_from.freeze = ["trunk.", "branch.", "head."]``.

* Training mode: the model runs all experts as usual and adds ``router_logits`` (B, E-1), decision k taken after
  experts 0..k (trained by the ``ride_router`` loss).
* Eval mode: early exit. Expert 0 runs for every sample; expert k runs only for samples whose decision k-1 has
  sigmoid(u) > ``threshold``. The output adds ``experts_used`` (B,) in 1..E. ``logits`` (B, E, C) holds the evaluated
  experts' logits and, in the slots of experts a sample skipped, the mean of the experts it used, so that
  ``logits.mean(1)`` (what every evaluator averages) equals the early-exit prediction ``output``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.registry import ConfigError, Registry

ROUTERS = Registry("router")


class ExpertRouter(nn.Module):
    """Per decision k < E-1: u_k = g([top-K of the prefix-mean logits, ReLU(h_k(normalize(feature of expert k)))]).

    ``h_k``: feature_dim -> hidden_dim, one per decision; ``g``: (hidden_dim + top_k) -> 1, shared by all decisions.
    """

    def __init__(self, num_experts: int, feature_dim: int, num_classes: int, top_k: int = 30, hidden_dim: int = 16,
                 threshold: float = 0.5) -> None:
        super().__init__()
        if num_experts < 2:
            raise ConfigError(f"arch.router needs at least 2 experts (arch.args.num_experts is {num_experts})")
        if not 1 <= top_k <= num_classes:
            raise ConfigError(f"arch.router.args.top_k must be in 1..{num_classes} (the class count), got {top_k}")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"arch.router.args.threshold is a probability in [0, 1], got {threshold}")
        self.num_experts, self.top_k, self.threshold = num_experts, top_k, threshold
        self.hidden = nn.ModuleList(nn.Linear(feature_dim, hidden_dim) for _ in range(num_experts - 1))
        self.output = nn.Linear(hidden_dim + top_k, 1)

    def decision(self, k: int, features: torch.Tensor, mean_logits: torch.Tensor) -> torch.Tensor:
        """Router logit (B,) "expert k+1 will help" from expert k's pooled features and the mean logits of 0..k."""
        hidden = F.relu(self.hidden[k](F.normalize(features, dim=-1)))
        confidence = mean_logits.topk(self.top_k, dim=-1).values
        return self.output(torch.cat([confidence.to(hidden.dtype), hidden], dim=-1)).squeeze(-1)

    def forward(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Training-time router logits (B, E-1) from all experts' logits (B, E, C) and pooled features (B, E, D)."""
        counts = torch.arange(1, logits.shape[1] + 1, device=logits.device, dtype=logits.dtype)
        prefix_mean = logits.cumsum(dim=1) / counts[None, :, None]
        decisions = [self.decision(k, features[:, k], prefix_mean[:, k]) for k in range(self.num_experts - 1)]
        return torch.stack(decisions, dim=1)

    def early_exit(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference with per-sample early exit (METHODS.md §7.3) through ``model``'s trunk, branch and head."""
        shared = model.trunk(x)
        features = model.expert_features(shared, 0)
        first = model.head.forward_expert(features, 0)
        batch, num_classes = first.shape
        logits = first.new_zeros(batch, self.num_experts, num_classes)
        logits[:, 0] = first
        total = first.clone()
        used = torch.ones(batch, dtype=torch.long, device=x.device)
        active = torch.arange(batch, device=x.device)
        for k in range(1, self.num_experts):
            u = self.decision(k - 1, features, total[active] / used[active, None])
            active = active[torch.sigmoid(u.float()) > self.threshold]
            if active.numel() == 0:
                break
            features = model.expert_features(shared[active], k)
            z = model.head.forward_expert(features, k)
            logits[active, k] = z
            total[active] = total[active] + z
            used[active] += 1
        mean = total / used[:, None]
        skipped = torch.arange(self.num_experts, device=x.device)[None, :] >= used[:, None]
        logits = torch.where(skipped[..., None], mean[:, None, :].to(logits.dtype), logits)
        return {"output": mean, "logits": logits, "experts_used": used}


@ROUTERS.register("ride")
def ride_router(num_experts: int, feature_dim: int, num_classes: int, top_k: int = 30, hidden_dim: int = 16,
                threshold: float = 0.5) -> ExpertRouter:
    """RIDE's router: top_k confidences (configs 30 CIFAR, 50 ImageNet/iNat), hidden width 16, exit threshold 0.5."""
    return ExpertRouter(num_experts, feature_dim, num_classes, top_k, hidden_dim, threshold)


def attach_router(model: nn.Module, block: Any) -> nn.Module:
    """Give a MultiExpertModel the router described by the ``arch.router`` config block (returns the model)."""
    if not isinstance(block, dict) or "type" not in block:
        raise ConfigError(f"arch.router must be {{\"type\": one of {ROUTERS.names()}, \"args\": {{...}}}}, "
                          f"got {block!r} (a --router_threshold flag needs a checkpoint whose model has a router)")
    if not all(hasattr(model, name) for name in ("trunk", "expert_features", "head", "num_experts", "feature_dim")):
        raise ConfigError("arch.router needs a multi-expert model (MultiExpertModel), "
                          f"but arch.type builds {type(model).__name__}")
    model.router = ROUTERS.build(block, "arch.router", num_experts=model.num_experts, feature_dim=model.feature_dim,
                                 num_classes=model.num_classes)
    return model
