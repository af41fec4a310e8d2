"""Every registry of the framework, in one place (as mmpretrain's ``registry.py``): what can be named in a config.

A registry maps names to constructors and builds objects from ``{"type": name, "args": {...}}`` blocks
(``longtail.utils.registry.Registry``). The modules that fill them are plugin packages, imported on the first
look-up of any registry, so ``MODELS.names()`` lists every model without the caller importing anything else; a
config's ``imports`` list adds your own modules the same way (docs/extending.md).

Layering: this module imports only ``longtail.utils``; every layer registers here and looks names up here, so no
layer needs to import the one that registers a name.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from longtail.utils.registry import Registry

# ---- data layer (longtail.data_loader)
DATASETS = Registry("dataset")
SAMPLERS = Registry("sampler")
LOADERS = Registry("loader")  # keyed by a data set's ``loader_kind``: how batches of that kind of data set are made
AUGMENTS = Registry("augmentation")  # batch augmentations of tensor data sets (data_loader.args.augment)
IMAGE_AUGMENTS = Registry("image augmentation")  # per-image augmentations of image-list data sets
# families of shifted test priors: fn(PriorPool, **settings) -> [ShiftedPrior] (data_loader/shift_protocols.py)
TEST_PROTOCOLS = Registry("test-prior protocol")

# ---- model layer (longtail.model)
MODELS = Registry("model")
LOSSES = Registry("loss")
WEIGHT_FORMATS = Registry("weight format")  # init_from.format: how a weights file maps onto a model
# arch.<key> blocks besides type/args: builder(model, block) -> ModelExtension attached under <key> (model/experts.py)
MODEL_EXTENSIONS = Registry("model extension")
# arch.peft.type: parameter-efficient fine-tuning of a backbone, fn(model, **args) (model/peft.py)
PEFT = Registry("parameter-efficient fine-tuning method")

# ---- what a run is built from (longtail.core)
OPTIMIZERS = Registry("optimizer")
SCHEDULERS = Registry("lr scheduler")
COMBINERS = Registry("combiner")
SECTIONS = Registry("config section")  # top-level config blocks with build / training hooks (core/hooks.py)
STAGES = Registry("stage")  # how a run trains: "sgd" (trainer/trainer.py) or a method's non-SGD stage

# ---- evaluation (longtail.evaluation)
POSTHOC = Registry("post-hoc correction")
AGGREGATIONS = Registry("expert aggregation")  # test-time procedures (evaluation.test_time.<name>)
# evaluation.views: how the logits pass sees each test image (one centre view, five crops, ...), core/logits.py
TEST_VIEWS = Registry("test-time view")
REPORTERS = Registry("report")
# checkpoints of other code bases: fn(path) -> evaluation.hooks.ForeignWeights, or None when the file is not theirs
CHECKPOINT_READERS = Registry("checkpoint reader")

# ---- beyond one process (longtail.cluster): how a sweep's job graph is run (local processes, SLURM via submitit)
LAUNCHERS = Registry("launcher")

# ---- command-line flags a method owns (train.py, test.py, test_all_*.py, flops; train flags are API keywords too)


@dataclass
class CliFlag:
    """A command-line flag a method contributes to some tools; ``apply(args, value)`` returns config overrides
    (``[(dotted key, value)]``) and may set other parsed arguments."""

    flags: tuple[str, ...]
    tools: tuple[str, ...]
    apply: Callable[[argparse.Namespace, Any], list[tuple[str, Any]]]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        """Attribute name argparse stores the value under."""
        return self.flags[0].lstrip("-").replace("-", "_")


CLI_FLAGS: list[CliFlag] = []


def register_cli_flag(flags: Sequence[str], tools: Sequence[str], apply: Callable[[argparse.Namespace, Any], list],
                      **kwargs: Any) -> None:
    """Add a method's flag to the tools named in ``tools`` (train, test, test_all, flops)."""
    CLI_FLAGS.append(CliFlag(tuple(flags), tuple(tools), apply, kwargs))


def cli_flags(tool: str) -> list[CliFlag]:
    """The registered flags of ``tool`` (loads the plugin packages first)."""
    Registry.load_plugins()
    return [flag for flag in CLI_FLAGS if tool in flag.tools]


# The modules that register the built-in entries, and the method plugins; imported on the first look-up.
for _package in ("longtail.data_loader", "longtail.model", "longtail.core", "longtail.trainer", "longtail.evaluation",
                 "longtail.methods"):
    Registry.add_plugin_package(_package)

ALL = {name: value for name, value in dict(globals()).items() if isinstance(value, Registry)}
