"""Class-Balanced Experts (METHODS.md §8): group experts with an "other" output fused by a joint calibration module.

Each expert covers one shot group (many / medium / few classes from the training counts) plus an "other" output;
the calibration module rescales every expert's outputs (per-output temperature and bias), turns them into
probabilities, drops "other", scatters the group probabilities to their classes and renormalises over all classes.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.loss import at_least_fp32
from model.registry import MODELS
from utils.metrics import group_classes
from utils.registry import ConfigError


class ExpertCalibration(nn.Module):
    """Fuses the raw logits of group experts (each k_e + 1 outputs, "other" last) into log-probabilities over C classes.

    ``q_e = softmax(T_e * (z_e + [0, ..., 0, log((1 + r_e) / 2)]) + b_e)``; the first k_e entries of q_e go to the
    expert's classes; the C-vector is renormalised and its log returned. The groups must partition the classes.
    Biases start at 0 (the reference starts at 1, which is the same softmax: a shared shift per expert cancels).
    """

    def __init__(self, class_lists: Sequence[Sequence[int]], num_classes: int) -> None:
        super().__init__()
        covered = sorted(c for classes in class_lists for c in classes)
        if covered != list(range(num_classes)):
            raise ValueError(f"the expert groups must cover each of the {num_classes} classes exactly once, "
                             f"got {len(covered)} class slots ({len(set(covered))} distinct)")
        self.num_classes = num_classes
        for e, classes in enumerate(class_lists):
            self.register_buffer(f"classes{e}", torch.as_tensor(list(classes), dtype=torch.long))
        sizes = [len(classes) + 1 for classes in class_lists]
        self.temperature = nn.ParameterList([nn.Parameter(torch.ones(k)) for k in sizes])
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(k)) for k in sizes])
        # log((1 + r_e) / 2) added to each expert's "other" logit; set from the experts' open-set ratios r_e
        self.register_buffer("other_shift", torch.zeros(len(class_lists)))

    @property
    def num_groups(self) -> int:
        """Number of group experts."""
        return len(self.temperature)

    def classes(self, expert: int) -> torch.Tensor:
        """Original class indices covered by ``expert`` (ascending; its output i is class classes[i])."""
        return getattr(self, f"classes{expert}")

    def set_open_ratios(self, ratios: Sequence[float]) -> None:
        """Set the "other"-logit pre-adjustment log((1 + r) / 2) from each expert's open-set sampling ratio r."""
        if len(ratios) != self.num_groups:
            raise ValueError(f"need one open-set ratio per expert ({self.num_groups}), got {len(ratios)}")
        self.other_shift.copy_(torch.tensor([math.log((1.0 + r) / 2.0) for r in ratios]))

    def forward(self, expert_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw expert logits [(B, k_e + 1)] -> fused log-probabilities (B, C), computed in log space (no underflow)."""
        group_log_probs = []
        for e, logits in enumerate(expert_logits):
            logits = at_least_fp32(logits)
            adjusted = torch.cat([logits[:, :-1], logits[:, -1:] + self.other_shift[e]], dim=1)
            group_log_probs.append(F.log_softmax(self.temperature[e] * adjusted + self.bias[e], dim=1)[:, :-1])
        log_probs = group_log_probs[0].new_zeros(group_log_probs[0].shape[0], self.num_classes)
        for e, log_q in enumerate(group_log_probs):
            log_probs = log_probs.index_copy(1, self.classes(e), log_q)
        return log_probs - torch.logsumexp(log_probs, dim=1, keepdim=True)


class ClassBalancedExperts(nn.Module):
    """Frozen group experts (complete single-expert networks) + the trainable joint calibration module.

    ``forward`` returns the fused log-probabilities as ``output`` and as a one-"expert" ``logits`` (B, 1, C), so the
    shared evaluation (accuracy, calibration, post-hoc prior correction) treats the combination like any model.
    """

    num_experts = 1  # one fused prediction as far as losses and the evaluator are concerned

    def __init__(self, experts: Sequence[nn.Module], calibration: ExpertCalibration) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.calibration = calibration
        self.experts.requires_grad_(False)
        self.experts.eval()

    def train(self, mode: bool = True) -> "ClassBalancedExperts":
        """Only the calibration module changes mode; the experts stay in eval mode (fixed BN statistics)."""
        super().train(mode)
        self.experts.eval()
        return self

    def expert_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw logits of every group expert, [(B, k_e + 1)]."""
        return [expert(x)["output"] for expert in self.experts]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        log_probs = self.calibration(self.expert_logits(x))
        return {"output": log_probs, "logits": log_probs.unsqueeze(1)}


@MODELS.register("class_balanced_experts")
def class_balanced_experts(num_classes: int, in_channels: int = 3, cls_num_list: list[int] | None = None,
                           expert_arch: dict[str, Any] | None = None, groups: list[str] = ("many", "medium", "few"),  # type: ignore[assignment]
                           many_threshold: int = 100, few_threshold: int = 20) -> ClassBalancedExperts:
    """One ``expert_arch`` network per class group (k_e + 1 outputs, "other" last) + joint calibration.

    The groups come from the training counts with the evaluation rule (many: n > many_threshold, few:
    n < few_threshold); closed classes are numbered in increasing original-label order, as in the expert data sets.
    """
    if cls_num_list is None:
        raise ConfigError("arch 'class_balanced_experts' needs the training class counts (cls_num_list) to form its groups")
    if not expert_arch:
        raise ConfigError("arch.args.expert_arch must describe the experts' network, e.g. "
                          '{"type": "resnet32", "args": {"num_experts": 1, "use_norm": false}}')
    class_lists = [group_classes(cls_num_list, g, many_threshold, few_threshold) for g in groups]
    experts = []
    for group, classes in zip(groups, class_lists):
        if not classes:
            raise ConfigError(f"class group {group!r} is empty for these training counts (thresholds {many_threshold}/"
                              f"{few_threshold}); remove it from arch.args.groups or change the thresholds")
        expert = MODELS.build(expert_arch, "arch.args.expert_arch", num_classes=len(classes) + 1, in_channels=in_channels)
        if getattr(expert, "num_experts", 1) != 1:
            raise ConfigError("arch.args.expert_arch must build a single-expert network (num_experts 1)")
        experts.append(expert)
    return ClassBalancedExperts(experts, ExpertCalibration(class_lists, num_classes))
