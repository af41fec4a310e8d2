"""BCL (Zhu et al., CVPR 2022, "Balanced Contrastive Learning"): logit-adjusted cross-entropy on one view plus a
supervised contrastive loss with class-averaging and class-complement on the other views (docs/methods.md, BCL).

The batch holds k >= 3 views of B images, view by view (a ``multi_view`` augmentation, data_loader/multiview.py):
view 0 feeds the classifier, views 1..k-1 the contrastive branch. The model's ``arch.projection`` extension
(model/projection.py) provides the normalised projections v (k*B, E, P) and the class prototypes c (E, C, P)
computed from the classifier weights. Per expert:

    L = alpha * CE(z^(0) + tau * log pi, y)  +  beta * L_BCL
    L_BCL = -1/|A| sum_{i in A} 1/|P(i)| sum_{p in P(i)} log( exp(s_ip) / sum_{j != i} exp(s_ij) / w_ij )

A are the (k-1)*B contrastive anchors, the candidates j are all other anchors and the C prototypes, s_ij = v_i.v_j / T,
P(i) the candidates of i's class (its other views, same-class images, its prototype), and w_ij = |{candidates of class
y_j}| (anchors of the batch plus one prototype), minus one when y_j = y_i (the anchor itself): each class contributes
the MEAN of its exp-similarities to the denominator (class-averaging) and every class is present through its prototype
(class-complement). As the official code (FlamieZhu/Balanced-Contrastive-Learning, loss/contrastive.py, BalSCL), the
row maximum (self-similarity included) is subtracted before exponentiating. With several experts the per-expert
losses are summed.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from longtail.model.losses.base import ExpertLoss, LossOutput, as_expert_logits, at_least_fp32, log_prior
from longtail.registry import LOSSES
from longtail.utils.errors import ConfigError


def balanced_contrastive(features: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """L_BCL of anchors ``features`` (N, P) with labels ``target`` (N,) and class prototypes (C, P); normalised inputs."""
    n, num_classes = features.shape[0], prototypes.shape[0]
    labels = torch.cat([target, torch.arange(num_classes, device=target.device)])
    candidates = torch.cat([features, prototypes])
    count = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    not_self = torch.ones(n, n + num_classes, device=features.device, dtype=features.dtype)
    not_self[:, :n].fill_diagonal_(0)
    positive = (target[:, None] == labels[None, :]).to(features.dtype) * not_self
    logits = features @ candidates.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    weight = count[labels][None, :] - positive
    denominator = (logits.exp() * not_self / weight).sum(dim=1, keepdim=True)
    log_prob = logits - denominator.log()
    return -((positive * log_prob).sum(dim=1) / positive.sum(dim=1)).mean()


class BCLLoss(ExpertLoss):
    """alpha * logit-adjusted CE on view 0 + beta * balanced contrastive loss on views 1..k-1 (module docstring)."""

    extra_inputs = ("projection", "prototypes")

    def __init__(self, cls_num_list: Sequence[int], num_views: int, alpha: float, beta: float, temperature: float,
                 tau: float) -> None:
        super().__init__()
        if num_views < 3:
            raise ConfigError(f"loss.args.num_views must be >= 3 (view 0 for the classifier, at least two contrastive "
                              f"views), got {num_views}")
        if temperature <= 0:
            raise ConfigError(f"loss.args.temperature must be > 0, got {temperature}")
        self.num_views, self.alpha, self.beta, self.temperature, self.tau = num_views, alpha, beta, temperature, tau
        self.register_buffer("log_prior", log_prior(cls_num_list))

    def forward(self, logits: torch.Tensor, target: torch.Tensor,  # type: ignore[override]
                projection: torch.Tensor, prototypes: torch.Tensor) -> LossOutput:
        z = as_expert_logits(logits)
        v = at_least_fp32(projection)
        b = z.shape[0] // self.num_views
        labels = target[:b]
        terms = []
        for e in range(z.shape[1]):
            ce = F.cross_entropy(z[:b, e] + self.tau * self.log_prior, labels)
            contrast = balanced_contrastive(v[b:, e], target[b:], at_least_fp32(prototypes[e]), self.temperature)
            terms.append(self.alpha * ce + self.beta * contrast)
        per_expert = torch.stack(terms)
        return LossOutput(per_expert.sum(), per_expert)


@LOSSES.register("bcl")
def bcl_loss(cls_num_list: list[int], num_views: int = 3, alpha: float = 1.0, beta: float = 0.35,
             temperature: float = 0.07, tau: float = 1.0) -> BCLLoss:
    """BCL: logit-adjusted CE (tau) on view 0 + beta * balanced supervised contrastive loss (temperature) on the
    other views and the class prototypes (needs a multi_view augmentation and arch.projection)."""
    return BCLLoss(cls_num_list, num_views, alpha, beta, temperature, tau)
