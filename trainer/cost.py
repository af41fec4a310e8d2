"""Per-image compute of a multi-expert model split into parts, and the expected cost of early exit (METHODS.md §5.5).

Costs are multiply-accumulates (MACs) of convolutions and matrix products, counted by tracing one forward pass of a
single image (utils.flops); the reference repos report the same quantity as "GFLOPs"/"MACs(G)". Pooling, BN,
activations and the cosine head's normalisation are not counted (as with the reference thop counter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from utils.flops import count_call_macs


@dataclass
class ExpertCost:
    """MACs per image of the shared trunk, ONE expert's branch, all heads together and ONE router decision."""

    num_experts: int
    trunk: int
    branch: int
    heads: int
    router: int = 0

    def with_experts(self, k: int) -> float:
        """MACs of a sample that uses the first ``k`` experts (and, with a router, the decisions it evaluated).

        Early exit after k < E experts evaluates k decisions (the last one said stop); all E experts need E - 1.
        """
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"k must be in 1..{self.num_experts}, got {k}")
        decisions = min(k, self.num_experts - 1) if self.router else 0
        return self.trunk + k * self.branch + k * self.heads / self.num_experts + decisions * self.router

    @property
    def all_experts(self) -> float:
        """MACs when every expert (and every router decision) runs."""
        return self.with_experts(self.num_experts)

    def expected(self, percentages: Sequence[float]) -> float:
        """Expected MACs per image when p_k percent of the samples use exactly k experts (k = 1..E)."""
        if len(percentages) != self.num_experts:
            raise ValueError(f"give one percentage per expert count 1..{self.num_experts}, "
                             f"got {len(percentages)} values")
        if any(p < 0 for p in percentages) or not math.isclose(sum(percentages), 100.0, abs_tol=0.5):
            raise ValueError("the percentages of samples using 1..E experts must be >= 0 and sum to 100, "
                             f"got {list(percentages)}")
        return sum(p / 100.0 * self.with_experts(k) for k, p in enumerate(percentages, start=1))


def is_multi_expert(model: nn.Module) -> bool:
    """Whether ``model`` has the trunk / per-expert branch / heads structure of MultiExpertModel."""
    return all(hasattr(model, name) for name in ("trunk", "expert_features", "head", "num_experts", "feature_dim"))


@torch.no_grad()
def expert_cost(model: nn.Module, image_shape: tuple[int, ...]) -> ExpertCost:
    """Measure trunk, one expert branch, the heads and one router decision of a MultiExpertModel on one image."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.zeros(1, *image_shape, device=device)
        shared = model.trunk(x)
        feat = torch.ones(1, model.num_experts, model.feature_dim, device=device)
        logits = torch.ones(1, model.num_classes, device=device)
        router = getattr(model, "router", None)
        return ExpertCost(
            num_experts=model.num_experts,
            trunk=count_call_macs(lambda: model.trunk(x)),
            branch=count_call_macs(lambda: model.expert_features(shared, 0)),
            heads=count_call_macs(lambda: model.head(feat)),
            router=count_call_macs(lambda: router.decision(0, feat[:, 0], logits)) if router is not None else 0,
        )
    finally:
        model.train(was_training)


def experts_used_percentages(experts_used: torch.Tensor, num_experts: int) -> list[float]:
    """Percentage of samples that used exactly k = 1..E experts."""
    counts = torch.bincount(experts_used.long().flatten(), minlength=num_experts + 1)[1:num_experts + 1].double()
    return (100.0 * counts / max(experts_used.numel(), 1)).tolist()


def routing_report(experts_used: torch.Tensor, targets: torch.Tensor, masks: dict[str, torch.Tensor],
                   cost: ExpertCost) -> dict[str, float]:
    """Mean experts used (overall and per shot group of the true class), % of samples per count, expected MACs (M)."""
    used = experts_used.double()
    report = {"experts_mean": float(used.mean())}
    for group, mask in masks.items():
        in_group = mask.to(targets.device)[targets]
        report[f"experts_mean_{group}"] = float(used[in_group].mean()) if in_group.any() else float("nan")
    percentages = experts_used_percentages(experts_used, cost.num_experts)
    report.update({f"pct_{k}_experts": p for k, p in enumerate(percentages, start=1)})
    report["mmacs"] = cost.expected(percentages) / 1e6  # millions: readable for CIFAR (~100) and small models alike
    report["mmacs_all_experts"] = cost.all_experts / 1e6
    return report
