"""The one multi-expert wrapper: shared trunk -> per-expert branch (batched or looped) -> pooled features -> heads."""
from __future__ import annotations

import torch
import torch.nn as nn

from model.layers import ExpertHead


class MultiExpertModel(nn.Module):
    """Generic multi-expert network over any backbone split into a shared ``trunk`` and a per-expert ``branch``.

    ``branch`` is built from expert layers (model/layers.py) for ``num_experts`` experts. ``batched_experts=True``
    runs all experts in one grouped pass; ``False`` runs them one by one with views of the same weights.
    ``forward`` returns ``{"output": mean of expert logits (B, C), "logits": (B, E, C), "feat": (B, E, D)}``.
    An optional ``router`` (model/router.py, set from the ``arch.router`` config block) adds ``router_logits`` in
    training mode and runs per-sample early exit in eval mode.
    """

    def __init__(self, trunk: nn.Module, branch: nn.Module, feature_dim: int, num_classes: int, num_experts: int = 1,
                 use_norm: bool = True, s: float = 30.0, batched_experts: bool = False) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"arch.args.num_experts must be >= 1, got {num_experts}")
        self.trunk, self.branch = trunk, branch
        self.num_experts, self.num_classes, self.feature_dim = num_experts, num_classes, feature_dim
        self.batched_experts = batched_experts
        self.head = ExpertHead(num_experts, feature_dim, num_classes, cosine=use_norm, scale=s)
        self.router: nn.Module | None = None

    def expert_features(self, shared: torch.Tensor, expert: int) -> torch.Tensor:
        """Pooled features (B, D) of one expert from the trunk output (used by routers and the looped path)."""
        return self.branch(shared, expert).mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled per-expert features (B, E, D)."""
        shared = self.trunk(x)
        if self.num_experts == 1 or self.batched_experts:
            stacked = shared.repeat(1, self.num_experts, 1, 1) if self.num_experts > 1 else shared
            pooled = self.branch(stacked, None).mean(dim=(2, 3))
            return pooled.view(x.shape[0], self.num_experts, self.feature_dim)
        return torch.stack([self.expert_features(shared, e) for e in range(self.num_experts)], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.router is not None and not self.training:
            return self.router.early_exit(self, x)
        feat = self.features(x)
        logits = self.head(feat)
        out = {"output": logits.mean(dim=1), "logits": logits, "feat": feat}
        if self.router is not None:
            out["router_logits"] = self.router(logits, feat)
        return out
