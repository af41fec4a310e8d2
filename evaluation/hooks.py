"""Extension points of the evaluator (docs/extending.md); methods register entries, the evaluator calls them.

* ``POSTHOC``: a correction of the ensemble logits of one test set, ``fn(logits (N, C) float32 on the evaluation
  device, targets (N,), context) -> (logits, extra columns)`` ("none", "oracle", "estimate" are built in).
* ``AGGREGATIONS``: how expert logits become one prediction per test prior, ``fn(run, data, subsets) ->
  {prior: weights (E,) or (N_prior, E) per image}`` or ``None`` for the plain mean ("mean" is built in; SADE
  registers "sade" and its streaming "sade_online").
* ``REPORTERS``: extra columns of the uniform test report from per-sample model outputs, ``fn(run, extras, targets,
  masks, image_shape) -> {column: value}`` (RIDE's router reports experts used and expected MACs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from utils.registry import Registry

# Method plugins register here too (trainer/hooks.py names the plugin packages; importing it is enough).
import trainer.hooks  # noqa: F401,E402

POSTHOC = Registry("post-hoc correction")
AGGREGATIONS = Registry("expert aggregation")
REPORTERS = Registry("report")


@dataclass
class PosthocContext:
    """What a post-hoc correction may use besides the logits: training counts and the evaluation settings."""

    cls_num_list: list[int]
    evaluation: dict[str, Any]
