"""Per-image compute of a multi-expert model split into parts (docs/methods.md, compute).

Costs are multiply-accumulates (MACs) of convolutions and matrix products, counted by tracing one forward pass of a
single image (utils.flops); the reference repos report the same quantity as "GFLOPs"/"MACs(G)". Pooling, BN,
activations and the cosine head's normalisation are not counted (as with the reference thop counter).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from longtail.utils.flops import count_call_macs


@dataclass
class ExpertCost:
    """MACs per image of the shared trunk, ONE expert's branch and all heads together."""

    num_experts: int
    trunk: int
    branch: int
    heads: int

    def with_experts(self, k: int) -> float:
        """MACs of a sample that runs the trunk and the first ``k`` experts (with their heads)."""
        if not 1 <= k <= self.num_experts:
            raise ValueError(f"k must be in 1..{self.num_experts}, got {k}")
        return self.trunk + k * self.branch + k * self.heads / self.num_experts

    @property
    def all_experts(self) -> float:
        """MACs when every expert runs."""
        return self.with_experts(self.num_experts)


def is_multi_expert(model: nn.Module) -> bool:
    """Whether ``model`` has the trunk / per-expert branch / heads structure of MultiExpertModel."""
    return all(hasattr(model, name) for name in ("trunk", "expert_features", "head", "num_experts", "feature_dim"))


@torch.no_grad()
def expert_cost(model: nn.Module, image_shape: tuple[int, ...]) -> ExpertCost:
    """Measure trunk, one expert branch and the heads of a MultiExpertModel on one image."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.zeros(1, *image_shape, device=device)
        shared = model.trunk(x)
        feat = torch.ones(1, model.num_experts, model.feature_dim, device=device)
        return ExpertCost(
            num_experts=model.num_experts,
            trunk=count_call_macs(lambda: model.trunk(x)),
            branch=count_call_macs(lambda: model.expert_features(shared, 0)),
            heads=count_call_macs(lambda: model.head(feat)),
        )
    finally:
        model.train(was_training)
