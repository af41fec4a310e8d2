"""``init_from``: start a stage from an earlier stage's weights and freeze parts of it (cRT, LWS, RIDE's router,
Class-Balanced Experts, pretrained trunks). A built-in config section, written against the same hooks as methods'."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from longtail.registry import WEIGHT_FORMATS
from longtail.core.build import load_stage_checkpoint
from longtail.core.hooks import BuildContext, Section
from longtail.registry import SECTIONS
from longtail.utils.checkpoint import strip_prefixes
from longtail.utils.errors import ConfigError


@WEIGHT_FORMATS.register("framework")
def framework_weights(path: str, net: nn.Module) -> dict[str, Any]:
    """Weights of a checkpoint written by this framework (a run directory means its last.pth)."""
    return strip_prefixes(load_stage_checkpoint(path, "init_from.checkpoint")["model"])


def frozen_batchnorm_to_eval(net: nn.Module) -> None:
    """Put BN layers whose affine parameters are all frozen in eval mode (their running statistics stay fixed)."""
    for module in net.modules():
        params = list(module.parameters(recurse=False))
        if "BatchNorm" in type(module).__name__ and params and not any(p.requires_grad for p in params):
            module.eval()


@SECTIONS.register("init_from")
class InitFrom(Section):
    """``{"checkpoint": path, "exclude": ["head."], "freeze": ["trunk.", "branch."], "strict": false,
    "format": "framework"}``: copy the file's weights (minus ``exclude`` prefixes) and freeze ``freeze`` prefixes.

    ``format`` names how the file maps onto the model (``torchvision_resnet`` for an ImageNet-pretrained
    torchvision ResNet). When resuming, the weights come from the run's own checkpoint, so only the freezing is
    applied and the earlier stage's file need not exist any more. Frozen BN layers stay in eval mode.
    """

    keys = {"checkpoint": str, "exclude": list, "freeze": list, "strict": bool, "format": str}
    required = ("checkpoint",)

    def __init__(self, spec: dict[str, Any], name: str) -> None:
        super().__init__(spec, name)
        self.frozen: list[str] = []

    def checkpoints(self) -> dict[str, str]:
        """The weights file (only framework checkpoints are stage outputs; other formats are plain files)."""
        return {f"{self.name}.checkpoint": self.spec["checkpoint"]}

    def setup(self, net: nn.Module, ctx: BuildContext) -> None:
        """Load (unless resuming) and freeze."""
        if not ctx.resuming:
            self.load(net)
        freeze = tuple(self.spec.get("freeze", []))
        for name, param in net.named_parameters():
            if freeze and name.startswith(freeze):
                param.requires_grad_(False)
                self.frozen.append(name)

    def load(self, net: nn.Module) -> None:
        """Copy the file's weights (minus ``exclude`` prefixes) into ``net``; shapes must agree."""
        spec = self.spec
        exclude = tuple(spec.get("exclude", []))
        reader = WEIGHT_FORMATS.get(spec.get("format", "framework"), where="init_from.format")
        weights = {k: v for k, v in reader(spec["checkpoint"], net).items() if not k.startswith(exclude)}
        own = net.state_dict()
        mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
        if mismatched:
            raise ConfigError(f"init_from.checkpoint {spec['checkpoint']}: shapes differ for {', '.join(mismatched[:5])} "
                              "(different arch.args? add the prefixes to init_from.exclude to re-initialise them)")
        missing, unexpected = net.load_state_dict(weights, strict=False)
        if getattr(net, "base_weights", None) is not None:  # these no longer hold the pretrained file's values
            net.base_weights.forget(net, weights)
        missing = [k for k in missing if not k.startswith(exclude)]
        if spec.get("strict", False) and (missing or unexpected):
            raise ConfigError(f"init_from.checkpoint {spec['checkpoint']}: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def on_epoch_start(self, net: nn.Module, epoch: int) -> None:
        """Frozen BN layers keep their running statistics."""
        if self.frozen:
            frozen_batchnorm_to_eval(net)
