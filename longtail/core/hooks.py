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

from longtail.registry import AGGREGATIONS, SECTIONS
from longtail.utils.errors import ConfigError


@dataclass
class BuildContext:
    """What a hook may need about the run being built: config, device and the data set's shape and counts."""

    config: dict[str, Any]
    device: torch.device
    num_classes: int
    in_channels: int
    cls_num_list: list[int]
    resuming: bool = False  # weights come from the run's own checkpoint (do not load earlier stages' files)
    data: Any = None  # the run's DataBundle when the stage has built one (e.g. to initialise heads from features)


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

    # ---- the SGD loop's per-step points (trainer/trainer.py). They run on every step: never read a device value on
    # the host here (no .item(), no float(tensor), no data-dependent Python branch), so a step stays free of syncs.
    def on_train_start(self, trainer: Any) -> None:
        """Once before the first (or the resumed) epoch, after the state of a resumed run is restored."""

    def before_step(self, step: "StepContext") -> None:
        """Before the forward pass of a step (e.g. a per-step schedule of a loss coefficient)."""

    def after_backward(self, step: "StepContext") -> None:
        """Gradients are computed, the update has not happened (e.g. gradient clipping: call
        ``step.unscale_gradients()`` first so that fp16 gradients are in their true scale)."""

    def after_update(self, step: "StepContext") -> None:
        """After the optimizer step (e.g. an exponential moving average of the weights, a max-norm constraint)."""

    def on_epoch_end(self, trainer: Any, epoch: int) -> dict[str, float]:
        """After an epoch's last step: extra metrics for history.csv / TensorBoard (one host read per epoch is fine)."""
        return {}

    # ---- evaluation and checkpoints
    def eval_model(self, model: nn.Module) -> nn.Module:
        """The network validated during training (default: the trained model; an EMA section returns its average)."""
        return model

    def eval_weights(self, weights: dict[str, torch.Tensor], state: dict[str, Any] | None) -> dict[str, torch.Tensor]:
        """The weights the evaluator loads from a checkpoint of this run, given the trained weights and this section's
        saved state (default: the trained weights)."""
        return weights

    def state_dict(self) -> dict[str, Any]:
        """State saved in every checkpoint under ``sections.<name>`` and restored on resume (tensors and plain data)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@dataclass
class StepContext:
    """One training step as the per-step hooks see it: the stage, the batch, the loss output after the forward pass,
    and two services: ``unscale_gradients()`` (fp16: bring the gradients to their true scale once, before clipping)
    and ``recompute()`` (run forward + backward on the same batch and the same mixing draw again, e.g. SAM's second
    pass after perturbing the weights)."""

    trainer: Any
    epoch: int
    step: int
    images: torch.Tensor
    target: torch.Tensor
    output: Any = None
    recompute: Callable[[], Any] = lambda: None
    _unscaled: bool = field(default=False, repr=False)

    @property
    def model(self) -> nn.Module:
        """The trained network (unwrapped: no DDP / compile wrapper)."""
        return self.trainer.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.trainer.optimizer

    def unscale_gradients(self) -> None:
        """Divide fp16 gradients by the GradScaler's scale (once per step; nothing to do without a scaler)."""
        scaler = self.trainer.scaler
        if scaler is not None and not self._unscaled:
            scaler.unscale_(self.trainer.optimizer)
            self._unscaled = True


def overriding(sections: Sequence[Section], hook: str) -> list[Section]:
    """The sections that implement ``hook`` (the loop calls only those, so an unused point costs nothing)."""
    return [s for s in sections if getattr(type(s), hook) is not getattr(Section, hook)]


def section_validators() -> dict[str, Callable[[Any, dict[str, Any]], Any]]:
    """``{key: validator}`` of every registered section, for utils.config.resolve_config."""
    return {name: (lambda spec, config, cls=cls, name=name: cls.validate(spec, name)) for name, cls in SECTIONS.items()}


def build_sections(config: dict[str, Any]) -> list[Section]:
    """The section objects of the blocks present in ``config`` (in config order)."""
    return [SECTIONS.get(key)(config[key], key) for key in config if key in SECTIONS]


# ---- settings of the evaluator's test-time procedures (resolved with the config, used by the evaluator)
def settings_key(name: str) -> str:
    """The ``evaluation.test_time`` block a registered procedure reads (variants of one procedure share one)."""
    return getattr(AGGREGATIONS.get(name), "settings_key", name)


def procedure_settings(name: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    """``evaluation.test_time.<settings_key>`` merged over the procedure's ``defaults``; unknown keys are errors."""
    key = settings_key(name)
    defaults = dict(getattr(AGGREGATIONS.get(name), "defaults", {}))
    given = dict((evaluation.get("test_time") or {}).get(key) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(f'evaluation.test_time.{key}.{k}' for k in unknown)} for the "
                          f"test-time procedure {name!r}. Valid keys: {', '.join(defaults) or '(none)'}")
    return {**defaults, **given}


def check_test_time_blocks(evaluation: dict[str, Any]) -> None:
    """Every ``evaluation.test_time.<name>`` block belongs to a registered procedure and has only its keys."""
    blocks = evaluation.get("test_time") or {}
    if not isinstance(blocks, dict):
        raise ConfigError(f"evaluation.test_time must map procedure names to their settings, got {blocks!r}")
    owners = {settings_key(name): name for name in AGGREGATIONS.names()}
    for key, block in blocks.items():
        if key not in owners:
            AGGREGATIONS.get(key, where="evaluation.test_time.<name>")  # unknown: the error lists the valid names
        if not isinstance(block, dict):
            raise ConfigError(f"evaluation.test_time.{key} must be an object of settings, got {block!r}")
        procedure_settings(owners[key], evaluation)
