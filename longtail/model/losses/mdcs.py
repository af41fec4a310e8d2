"""MDCS (Zhao et al., ICCV 2023, "More Diverse, Consistent and Self-distilled experts"): diversity by per-expert
logit adjustment, consistency by self-distillation from a weak to a strong view of the same image, restricted to the
instances the teacher view classifies correctly (docs/methods.md, MDCS).

The batch holds two views of B images, view by view (a ``multi_view`` augmentation: rows 0..B-1 the weak view,
rows B..2B-1 the strong view, data_loader/multiview.py). With a_e = z_e + lambda_e log n_c (lambda per expert:
-0.5 / 1 / 2.5 for the many / medium / few experts of the official code) and the ramp w(epoch) = min(epoch / warmup,
1) of the 1-based training epoch:

    L = sum_e CE(a_e, y)  over both views (mean over 2B)
      + kd_weight * w(epoch) * sum_e KL_CIS(softmax(a_e^weak) || softmax(a_e^strong))
    KL_CIS: KL summed over classes, averaged over the weak-view instances whose argmax a_e^weak is the true class
            (0 when there is none); the teacher (weak view) is detached.

As the official code (fistyee/MDCS, model/loss.py, MDCSLoss): n_c are the raw counts (log n^lambda + 1e-9), the
distillation temperature is 1.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from longtail.model.losses.base import ExpertLoss, LossOutput, as_expert_logits, expert_cross_entropy
from longtail.registry import LOSSES
from longtail.utils.errors import ConfigError


def confident_kl(teacher: torch.Tensor, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) summed over classes and averaged over the samples whose teacher
    prediction is the target (0 if none); the teacher is detached. Written without a data-dependent branch."""
    teacher = teacher.detach()
    confident = (teacher.argmax(dim=1) == target).to(student.dtype)
    per_sample = F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher, dim=1), reduction="none").sum(dim=1)
    return (per_sample * confident).sum() / confident.sum().clamp_min(1.0)


class MDCSLoss(ExpertLoss):
    """Per-expert logit-adjusted CE on both views + confident weak-to-strong self-distillation (module docstring)."""

    num_views = 2

    def __init__(self, cls_num_list: Sequence[int], num_experts: int, lambdas: Sequence[float], kd_weight: float,
                 warmup: int) -> None:
        super().__init__()
        if len(lambdas) != num_experts:
            raise ConfigError(f"loss.args.lambdas has {len(lambdas)} values but arch.args.num_experts is {num_experts}; "
                              "give one logit-adjustment exponent per expert")
        counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
        lam = torch.as_tensor(list(lambdas), dtype=torch.float64)
        self.register_buffer("adjustment", torch.log(counts[None, :] ** lam[:, None] + 1e-9).float())  # (E, C)
        self.kd_weight, self.warmup = kd_weight, warmup
        self.ramp = 1.0

    def on_epoch_start(self, epoch: int) -> None:
        """w(epoch) = min(epoch / warmup, 1): the distillation ramps up linearly (1-based epochs)."""
        self.ramp = min(epoch / self.warmup, 1.0) if self.warmup > 0 else 1.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        z = as_expert_logits(logits)
        if z.shape[1] != self.adjustment.shape[0]:
            raise ValueError(f"the loss has {self.adjustment.shape[0]} experts' lambdas but the model returned "
                             f"{z.shape[1]} experts")
        adjusted = z + self.adjustment[None]
        ce = expert_cross_entropy(adjusted, target)
        b = z.shape[0] // 2
        kd = torch.stack([confident_kl(adjusted[:b, e], adjusted[b:, e], target[:b]) for e in range(z.shape[1])])
        per_expert = ce + self.kd_weight * self.ramp * kd
        return LossOutput(per_expert.sum(), per_expert)


@LOSSES.register("mdcs")
def mdcs_loss(cls_num_list: list[int], num_experts: int, lambdas: list[float] = (-0.5, 1.0, 2.5),  # type: ignore[assignment]
              kd_weight: float = 0.6, warmup: int = 20) -> MDCSLoss:
    """MDCS: CE on z_e + lambda_e log n per expert (both views) + kd_weight * min(epoch/warmup, 1) * KL from the weak
    to the strong view on the instances the weak view gets right (needs a 2-view multi_view augmentation)."""
    return MDCSLoss(cls_num_list, num_experts, list(lambdas), kd_weight, warmup)
