"""Combiners: one training step's forward + loss, optionally on mixed inputs (mixup / CutMix)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from longtail.model.losses.base import LossOutput
from longtail.utils.errors import ConfigError
from longtail.registry import COMBINERS



@dataclass
class StepOutput:
    """Loss to back-propagate, per-expert losses for logging and the (mix-weighted) number of correct predictions."""

    loss: torch.Tensor
    per_expert: torch.Tensor | None
    correct: torch.Tensor
    output: dict[str, torch.Tensor]


def compute_loss(criterion: Callable[..., LossOutput], output: dict[str, torch.Tensor], target: torch.Tensor) -> LossOutput:
    """criterion(expert logits, target, **the extra model outputs the loss lists in its ``extra_inputs``)."""
    names = getattr(criterion, "extra_inputs", ())
    missing = [name for name in names if name not in output]
    if missing:
        raise ConfigError(f"loss {type(criterion).__name__} needs the model output(s) {missing}, but the training step "
                          f"returned {sorted(output)}; add the config section or model extension that provides them")
    return criterion(output["logits"], target, **{name: output[name] for name in names})


def _correct(mean_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Number of correct top-1 predictions as a float tensor (no host sync)."""
    return (mean_logits.argmax(dim=1) == target).sum().float()


def _mix(a: LossOutput, b: LossOutput, lam: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lam * a + (1 - lam) * b for the total and the per-expert terms."""
    per_expert = None if a.per_expert is None else lam * a.per_expert + (1 - lam) * b.per_expert
    return lam * a.total + (1 - lam) * b.total, per_expert


class Combiner:
    """Plain forward + loss on the batch."""

    def __call__(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor, criterion: Callable[..., LossOutput],
                 gen: torch.Generator, host_rng: np.random.Generator) -> StepOutput:
        output = model(images)
        result = compute_loss(criterion, output, target)
        return StepOutput(result.total, result.per_expert, _correct(output["output"], target), output)


class MixCombiner(Combiner):
    """Mix each batch with a permutation of itself and mix the two losses with the same lambda (docs/methods.md, mixup)."""

    def __init__(self, alpha: float = 0.0, cutmix_alpha: float = 0.0, mixup_prob: float = 1.0) -> None:
        for key, value in (("alpha", alpha), ("cutmix_alpha", cutmix_alpha)):
            if value < 0:
                raise ConfigError(f"combiner.args.{key} is a Beta distribution parameter and must be >= 0, got {value}")
        if not 0 <= mixup_prob <= 1:
            raise ConfigError(f"combiner.args.mixup_prob is a probability in [0, 1], got {mixup_prob}")
        self.alpha, self.cutmix_alpha, self.mixup_prob = alpha, cutmix_alpha, mixup_prob

    def mix_inputs(self, images: torch.Tensor, perm: torch.Tensor, host_rng: np.random.Generator) -> tuple[torch.Tensor, float]:
        """Return the mixed batch and the effective lambda (weight of the original targets)."""
        use_mixup = self.cutmix_alpha <= 0 or (self.alpha > 0 and host_rng.random() < self.mixup_prob)
        if use_mixup:
            lam = float(host_rng.beta(self.alpha, self.alpha)) if self.alpha > 0 else 1.0
            return lam * images + (1 - lam) * images[perm], lam
        lam = float(host_rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        h, w = images.shape[-2:]
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(h * ratio), int(w * ratio)
        cy, cx = int(host_rng.integers(h)), int(host_rng.integers(w))
        y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
        x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
        return mixed, 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)

    def __call__(self, model: nn.Module, images: torch.Tensor, target: torch.Tensor, criterion: Callable[..., LossOutput],
                 gen: torch.Generator, host_rng: np.random.Generator) -> StepOutput:
        perm = torch.randperm(images.shape[0], generator=gen, device=images.device)
        mixed, lam = self.mix_inputs(images, perm, host_rng)
        output = model(mixed)
        target_b = target[perm]
        loss, per_expert = _mix(compute_loss(criterion, output, target), compute_loss(criterion, output, target_b), lam)
        correct = lam * _correct(output["output"], target) + (1 - lam) * _correct(output["output"], target_b)
        return StepOutput(loss, per_expert, correct, output)


@COMBINERS.register("default")
def default_combiner() -> Combiner:
    """No input mixing."""
    return Combiner()


@COMBINERS.register("mixup")
def mixup(alpha: float = 0.4) -> MixCombiner:
    """Mixup (Zhang et al. 2018) with lambda ~ Beta(alpha, alpha) per batch."""
    return MixCombiner(alpha=alpha)


@COMBINERS.register("cutmix")
def cutmix(cutmix_alpha: float = 1.0) -> MixCombiner:
    """CutMix (Yun et al. 2019): paste a box of a permuted image; lambda = kept area fraction."""
    return MixCombiner(cutmix_alpha=cutmix_alpha)


@COMBINERS.register("mixup_cutmix")
def mixup_cutmix(alpha: float = 0.4, cutmix_alpha: float = 1.0, mixup_prob: float = 0.5) -> MixCombiner:
    """Per batch: mixup with probability ``mixup_prob``, otherwise CutMix."""
    return MixCombiner(alpha=alpha, cutmix_alpha=cutmix_alpha, mixup_prob=mixup_prob)
