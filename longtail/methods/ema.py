"""Exponential moving average of the weights (Polyak averaging; timm's ModelEma) as a plugin of the step hooks.

``"ema": {"decay": 0.999, "warmup": true}``: after every optimizer update, ``w_ema <- d * w_ema + (1 - d) * w``
for every floating-point parameter and buffer (BN running statistics included; integer buffers are copied). With
``warmup`` the decay of update ``n`` (1-based) is ``min(decay, (1 + n) / (10 + n))`` so that early averages are not
dominated by the random initialisation. Validation during training and every evaluation of the run's checkpoints
use the average; the trained weights stay in ``model`` (resume continues training them) and the average is saved
under ``sections.ema``, so a resumed run continues both bit-exactly.

Touches no engine file: a Section with ``on_train_start`` / ``after_update`` / ``eval_model`` / ``eval_weights`` and
its own checkpoint state. The update runs on the device with no host read (foreach kernels, the decay a tensor).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from longtail.core.hooks import Section, StepContext
from longtail.registry import SECTIONS
from longtail.utils.errors import ConfigError


@SECTIONS.register("ema")
class WeightEMA(Section):
    """``{"decay": 0.999, "warmup": false}``: evaluate an exponential moving average of the weights."""

    keys = {"decay": (int, float), "warmup": bool}
    required = ("decay",)

    @classmethod
    def validate(cls, spec: Any, name: str) -> dict[str, Any]:
        """decay must lie in [0, 1)."""
        spec = super().validate(spec, name)
        if not 0.0 <= float(spec["decay"]) < 1.0:
            raise ConfigError(f"'{name}.decay' must be in [0, 1) (e.g. 0.999), got {spec['decay']}")
        return spec

    def __init__(self, spec: dict[str, Any], name: str) -> None:
        super().__init__(spec, name)
        self.decay = float(spec["decay"])
        self.warmup = bool(spec.get("warmup", False))
        self.average: nn.Module | None = None
        self.updates: torch.Tensor | None = None  # number of averaged updates, on the device
        self._saved: dict[str, Any] | None = None

    def on_train_start(self, trainer: Any) -> None:
        """Start the average from the model as it is now (after init_from and any resume), or from the saved one."""
        self.average = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        self.updates = torch.zeros((), device=trainer.device)
        if self._saved is not None:
            self.average.load_state_dict(self._saved["average"])
            self.updates.copy_(self._saved["updates"])
            self._saved = None
        pairs = list(zip(self.average.state_dict().values(), trainer.model.state_dict().values()))
        self._float = [(a, w) for a, w in pairs if a.is_floating_point()]
        self._other = [(a, w) for a, w in pairs if not a.is_floating_point()]

    def after_update(self, step: StepContext) -> None:
        """w_ema <- d w_ema + (1 - d) w, all tensors at once, without reading anything on the host."""
        self.updates += 1
        decay = torch.full_like(self.updates, self.decay)
        if self.warmup:
            decay = torch.minimum(decay, (1 + self.updates) / (10 + self.updates))
        averages, weights = [a for a, _ in self._float], [w.detach() for _, w in self._float]
        torch._foreach_lerp_(averages, weights, (1 - decay).to(averages[0].dtype))
        for average, weight in self._other:
            average.copy_(weight)

    def eval_model(self, model: nn.Module) -> nn.Module:
        """Validate the average."""
        return self.average if self.average is not None else model

    def eval_weights(self, weights: dict[str, torch.Tensor], state: dict[str, Any] | None) -> dict[str, torch.Tensor]:
        """Evaluate a checkpoint with its average (the trained weights when it was saved before any update)."""
        return state["average"] if state else weights

    def state_dict(self) -> dict[str, Any]:
        """The average and the update count."""
        if self.average is None:
            return self._saved or {}
        return {"average": self.average.state_dict(), "updates": self.updates.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Kept until on_train_start builds the average."""
        self._saved = state
