"""LWS, learnable weight scaling (Kang et al., ICLR 2020, "Decoupling representation and classifier"), as a plugin.

A second stage: the network of stage 1 is frozen and only one scale per class is learned, on class-balanced
batches: z_c -> s_c * z_c for every expert's logits (with a linear head this is w_c -> s_c w_c, b_c -> s_c b_c; with
a cosine head it rescales the class's cosine logit). The scales start at 1 (stage 1 unchanged).

Config: ``"arch": {..., "lws": {}}`` attaches the scales (parameters ``lws.scale``), ``init_from`` loads stage 1
and freezes ``trunk.``, ``branch.`` and ``head.``, ``data_loader.args.sampler`` is ``class_balanced``
(configs/*/lws.json). Nothing else: the SGD stage, the builder and the evaluator are unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from longtail.model.experts import ModelExtension
from longtail.registry import MODEL_EXTENSIONS
from longtail.utils.errors import ConfigError


class ClassScales(ModelExtension):
    """One learnable scale per class, multiplying every expert's logits (and therefore the ensemble mean)."""

    def __init__(self, num_classes: int, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((num_classes,), float(init)))

    def extend(self, model: nn.Module, x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scale the per-expert logits and recompute the mean output from them."""
        logits = out["logits"] * self.scale.to(out["logits"].dtype)
        return {**out, "logits": logits, "output": logits.mean(dim=1)}


@MODEL_EXTENSIONS.register("lws")
def attach_class_scales(model: nn.Module, block: Any) -> ClassScales:
    """``arch.lws`` = ``{}`` or ``{"init": 1.0}``: per-class logit scales (trained while the rest is frozen)."""
    if not isinstance(block, dict) or set(block) - {"init"}:
        raise ConfigError(f"arch.lws must be an object with at most the key 'init' (starting scale), got {block!r}")
    return ClassScales(model.num_classes, block.get("init", 1.0))
