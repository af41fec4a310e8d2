"""The extension points of the engine (docs/extending.md): what a method registers, and when the engine calls it.

The training loop, the builder and the evaluator call these hooks and never name a method. A method is a module in
``methods/`` (or any module listed in a config's ``imports``) that registers some of:

* ``MODEL_EXTENSIONS`` (model/registry.py): an ``arch.<key>`` block that attaches a module to the network (RIDE's
  router, LWS's per-class scales); the module may add outputs, replace eval-mode inference and report costs.
* ``SECTIONS``: a top-level config block with build / training hooks (:class:`Section`): e.g. ``distill`` wraps the
  training step with a frozen teacher, ``init_from`` loads and freezes an earlier stage's weights.
* ``STAGES``: how a run trains when it is not (only) SGD on the training set (a calibration fitted on cached
  logits, a post-hoc weight transform); every stage saves and resumes through the one checkpoint writer.
* evaluation hooks (evaluation/hooks.py): post-hoc corrections, test-time aggregations, report columns.
* ``register_cli_flag`` (longtail/registry.py): convenience flags of the command-line tools that a method owns
  (e.g. ``--router_threshold``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn as nn

from longtail.utils.errors import ConfigError
from longtail.registry import SECTIONS, STAGES
from longtail.utils.registry import Registry

# The engine's built-in sections and SGD stage, and the project's method plugins; users add theirs with a config's "imports" list.



@dataclass
class BuildContext:
    """What a hook may need about the run being built: config, device and the data set's shape and counts."""

    config: dict[str, Any]
    device: torch.device
    num_classes: int
    in_channels: int
    cls_num_list: list[int]
    resuming: bool = False  # weights come from the run's own checkpoint (do not load earlier stages' files)


class Section:
    """Behaviour of a top-level config block; subclasses override the hooks they need (all are optional).

    ``keys`` lists the accepted keys and their JSON types (checked when the config is resolved), ``required`` the
    mandatory ones, ``provides`` the extra model outputs the section adds to the training step (so a loss that
    needs one of them is matched with the section that provides it before any work starts).
    """

    keys: ClassVar[dict[str, type | tuple[type, ...]]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: dict[str, Any], name: str) -> None:
        self.spec, self.name = spec, name

    @classmethod
    def validate(cls, spec: Any, name: str) -> dict[str, Any]:
        """Check the block's keys and value types; returns the block."""
        if not isinstance(spec, dict):
            raise ConfigError(f"'{name}' must be an object with keys {', '.join(cls.keys)}, got {spec!r}")
        unknown = sorted(set(spec) - set(cls.keys))
        missing = [k for k in cls.required if k not in spec]
        if unknown or missing:
            raise ConfigError(f"'{name}' accepts the keys {', '.join(cls.keys)} (required: {', '.join(cls.required)}); "
                              + (f"unknown: {', '.join(unknown)}" if unknown else f"missing: {', '.join(missing)}"))
        for key, kind in cls.keys.items():
            if key in spec and (not isinstance(spec[key], kind) or (kind is int and isinstance(spec[key], bool))):
                raise ConfigError(f"'{name}.{key}' has the wrong type: {spec[key]!r}")
        return spec

    def checkpoints(self) -> dict[str, str]:
        """Files this section reads, as ``{config key: path}`` (checked by --dry_run, chained by pipelines)."""
        return {}

    def setup(self, model: nn.Module, ctx: BuildContext) -> None:
        """After the model is built (before the optimizer): load or freeze weights, attach state."""

    def step_model(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        """The module the training step calls (default: the model itself); only ``model`` is trained and saved."""
        return model

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        """Called every epoch after the model is put in training mode."""


def section_validators() -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
    """``{key: validator}`` of every registered section, for utils.config.resolve_config."""
    return {name: (lambda spec, config, cls=cls, name=name: cls.validate(spec, name)) for name, cls in SECTIONS.items()}


def build_sections(config: dict[str, Any]) -> list[Section]:
    """The section objects of the blocks present in ``config`` (in config order)."""
    return [SECTIONS.get(key)(config[key], key) for key in config if key in SECTIONS]
