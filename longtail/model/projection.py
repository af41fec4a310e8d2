"""A feature / prototype branch for contrastive losses: ``arch.projection`` (a model extension, model/experts.py).

``"arch": {..., "projection": {"dim": 128, "hidden_dim": null, "prototypes": true}}`` attaches, per expert e,

* a projection MLP g_e (Linear D->H, BatchNorm1d, ReLU, Linear H->P) on the expert's pooled features f_e:
  training forwards add ``projection`` = normalize(g_e(f_e)), shape (B, E, P);
* with ``prototypes``, a second MLP h_e of the same shape applied to the expert's classifier weights W_e (one row
  per class, (C, D)): ``prototypes`` = normalize(h_e(W_e)), shape (E, C, P): class centres in the projection space
  that move with the classifier (BCL's "class-complement" prototypes).

Both outputs exist in training mode only (the eval forward, and so the evaluator and the compute of inference, are
unchanged); their parameters live under ``projection.`` in the state dict. Losses consume them through
``extra_inputs`` ("projection", "prototypes").
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.model.experts import ModelExtension
from longtail.registry import MODEL_EXTENSIONS
from longtail.utils.errors import ConfigError
from longtail.utils.flops import count_call_macs

PROJECTION_KEYS = ("dim", "hidden_dim", "prototypes")


def mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> BatchNorm1d -> ReLU -> Linear (SimCLR / MoCo v2 / BCL projection head)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


def class_weights(head: nn.Module) -> torch.Tensor:
    """Classifier weights of every expert as (E, C, D) (cosine heads store (E, D, C))."""
    return head.weight.transpose(1, 2) if getattr(head, "cosine", False) else head.weight


class ProjectionHead(ModelExtension):
    """Per-expert projection MLPs on the pooled features and, optionally, on the classifier weights."""

    provides = ("projection", "prototypes")

    def __init__(self, num_experts: int, feature_dim: int, dim: int = 128, hidden_dim: int | None = None,
                 prototypes: bool = True) -> None:
        super().__init__()
        hidden = hidden_dim or feature_dim
        self.features = nn.ModuleList(mlp(feature_dim, hidden, dim) for _ in range(num_experts))
        self.centres = nn.ModuleList(mlp(feature_dim, hidden, dim) for _ in range(num_experts)) if prototypes else None
        if not prototypes:
            self.provides = ("projection",)  # type: ignore[misc]

    def project(self, feat: torch.Tensor) -> torch.Tensor:
        """normalize(g_e(f_e)) for every expert: (B, E, D) -> (B, E, P)."""
        return torch.stack([F.normalize(g(feat[:, e]), dim=-1) for e, g in enumerate(self.features)], dim=1)

    def prototypes(self, head: nn.Module) -> torch.Tensor:
        """normalize(h_e(W_e)) for every expert: (E, C, P)."""
        weights = class_weights(head)
        return torch.stack([F.normalize(h(weights[e]), dim=-1) for e, h in enumerate(self.centres)])

    def extend(self, model: nn.Module, x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training mode: add the projected features (and the class prototypes)."""
        if model.training:
            out["projection"] = self.project(out["feat"])
            if self.centres is not None:
                out["prototypes"] = self.prototypes(model.head)
        return out

    def cost_report(self, model: nn.Module, cost: Any, options: dict[str, Any]) -> list[str]:
        """MACs of the projection per image (training only; inference does not run it)."""
        device = next(model.parameters()).device
        feat = torch.ones(2, model.num_experts, model.feature_dim, device=device)
        was_training = self.training
        self.eval()
        try:
            macs = count_call_macs(lambda: self.project(feat)) / 2
        finally:
            self.train(was_training)
        return [f"  projection head (training only, all experts): {macs / 1e6:10.4f} M per image"]


@MODEL_EXTENSIONS.register("projection")
def attach_projection(model: nn.Module, block: Any) -> ProjectionHead:
    """``arch.projection`` = ``{"dim": 128, "hidden_dim": null (= feature dim), "prototypes": true}``."""
    if not isinstance(block, dict) or set(block) - set(PROJECTION_KEYS):
        raise ConfigError(f"arch.projection must be an object with keys {', '.join(PROJECTION_KEYS)}, got {block!r}")
    dim, hidden = block.get("dim", 128), block.get("hidden_dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1 or (hidden is not None and (
            not isinstance(hidden, int) or isinstance(hidden, bool) or hidden < 1)):
        raise ConfigError(f"arch.projection.dim and hidden_dim must be positive integers, got {dim!r} and {hidden!r}")
    prototypes = block.get("prototypes", True)
    if not isinstance(prototypes, bool):
        raise ConfigError(f"arch.projection.prototypes must be true or false, got {prototypes!r}")
    return ProjectionHead(model.num_experts, model.feature_dim, dim, hidden, prototypes)
