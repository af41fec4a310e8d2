"""Gradient-norm clipping as a plugin of the step hooks: ``"grad_clip": {"max_norm": 1.0, "norm_type": 2.0}``.

After backward and before the update, the gradients of all trainable parameters are rescaled so that their joint
norm is at most ``max_norm`` (torch.nn.utils.clip_grad_norm_; fp16 gradients are unscaled first). The mean
pre-clipping norm of the epoch is logged as ``grad_norm`` (one host read per epoch; none per step: the clipping
factor is applied on the device without a data-dependent branch). Touches no engine file.
"""
from __future__ import annotations

from typing import Any

import torch

from longtail.core.hooks import Section, StepContext
from longtail.registry import SECTIONS
from longtail.utils.errors import ConfigError


@SECTIONS.register("grad_clip")
class GradClip(Section):
    """``{"max_norm": 1.0, "norm_type": 2.0}``: clip the joint gradient norm every step."""

    keys = {"max_norm": (int, float), "norm_type": (int, float)}
    required = ("max_norm",)

    @classmethod
    def validate(cls, spec: Any, name: str) -> dict[str, Any]:
        """max_norm > 0."""
        spec = super().validate(spec, name)
        if float(spec["max_norm"]) <= 0:
            raise ConfigError(f"'{name}.max_norm' must be > 0, got {spec['max_norm']}")
        return spec

    def on_train_start(self, trainer: Any) -> None:
        """The parameters to clip and the epoch's norm accumulator."""
        self.params = [p for p in trainer.model.parameters() if p.requires_grad]
        self.norm_sum = torch.zeros((), device=trainer.device)
        self.steps = 0

    def after_backward(self, step: StepContext) -> None:
        """Unscale (fp16), clip, remember the norm."""
        step.unscale_gradients()
        norm = torch.nn.utils.clip_grad_norm_(self.params, float(self.spec["max_norm"]),
                                              float(self.spec.get("norm_type", 2.0)), foreach=True)
        self.norm_sum += norm.detach().float()
        self.steps += 1

    def on_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float]:
        """Mean gradient norm (before clipping) of the epoch."""
        mean = float(self.norm_sum) / max(self.steps, 1)
        self.norm_sum.zero_()
        self.steps = 0
        return {"grad_norm": mean}
