"""Extension points of the evaluator (docs/extending.md); methods register entries, the evaluator calls them.

* ``POSTHOC``: a correction of the ensemble logits of one test set, ``fn(logits (N, C) float32 on the evaluation
  device, targets (N,), context) -> (logits, extra columns)`` ("none", "oracle", "estimate" are built in).
* ``AGGREGATIONS``: test-time procedures: how expert logits become one prediction per test prior,
  ``fn(AggregationContext) -> {prior: weights (E,) or (N_prior, E) per image}`` or ``None`` for the plain mean
  ("mean" is built in). The context holds the expert logits the evaluator already collected; a procedure that
  needs the images themselves (augmented views) has the model and the test loader too. Settings: the block
  ``evaluation.test_time.<name>`` (``<name>`` = the entry's ``settings_key``, default its own name), merged over the
  entry's ``defaults`` and checked against them when the config is resolved. An entry that can also run without
  the model, from saved logits of augmented views of the test images, provides ``collect_views(model, loader,
  settings, amp) -> (V, 2, N, E, C)``; the context then holds them as ``view_logits`` (and ``run.model`` may be None).
* ``CHECKPOINT_READERS``: checkpoints written by other code bases, ``fn(path) -> ForeignWeights | None`` (None:
  not this reader's format); the evaluator builds the model from ``-c CONFIG`` and loads ``convert(model)``
  (methods/original_repos.py reads the original BalPoE / SADE / RIDE checkpoints).
* ``REPORTERS``: extra columns of the uniform test report from per-sample model outputs, ``fn(run, extras, targets,
  masks, image_shape) -> {column: value}`` (RIDE's router reports experts used and expected MACs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn



@dataclass
class PosthocContext:
    """What a post-hoc correction may use besides the logits: training counts, the evaluation settings and, when the
    evaluator has them, labelled held-out logits from the training distribution (the same ensemble as the test
    logits; estimators and calibrations fit on them) plus a cache for what is fitted once per checkpoint."""

    cls_num_list: list[int]
    evaluation: dict[str, Any]
    heldout_logits: torch.Tensor | None = None
    heldout_targets: torch.Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class ForeignWeights:
    """A checkpoint of another code base, recognised by a registered reader: what it is (for messages) and how its
    weights map onto a model of this framework built from the config that describes the same network."""

    description: str
    convert: Callable[[nn.Module], dict[str, torch.Tensor]]


@dataclass
class AggregationContext:
    """What a test-time procedure gets: the checkpoint (``run.model``, ``run.config``, ``run.label``), its test data,
    the index subset of every test prior, the per-expert logits (N, E, C) and targets the evaluator collected once,
    and the procedure's settings (``evaluation.test_time.<name>`` over its defaults)."""

    run: Any
    data: Any
    subsets: dict[str, torch.Tensor]
    expert_logits: torch.Tensor
    targets: torch.Tensor
    settings: dict[str, Any]
    view_logits: torch.Tensor | None = None  # (V, 2, N, E, C): saved logits of augmented test views (collect_views)
