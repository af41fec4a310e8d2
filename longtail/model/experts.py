"""The one multi-expert wrapper: shared trunk -> per-expert branch (batched or looped) -> pooled features -> heads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

import torch
import torch.nn as nn

from longtail.model.layers import ExpertHead


class ModelExtension(nn.Module):
    """A module attached to a MultiExpertModel by an ``arch.<key>`` config block (model/registry.py
    ``MODEL_EXTENSIONS``); it lives under ``<key>.`` in the state dict. Every hook is optional.

    ``provides``: extra outputs the training forward adds (a loss may consume them); ``per_sample_outputs``:
    eval-mode outputs with one value per sample that evaluation collects next to the logits.
    """

    provides: ClassVar[tuple[str, ...]] = ()
    per_sample_outputs: ClassVar[tuple[str, ...]] = ()

    def inference(self, model: "MultiExpertModel", x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Eval mode: replace the model's forward (e.g. per-sample early exit), or None to keep it."""
        return None

    def extend(self, model: "MultiExpertModel", x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Post-process the outputs (both modes): add keys or rescale logits."""
        return out

    def cost_report(self, model: "MultiExpertModel", cost: Any, options: dict[str, Any]) -> list[str]:
        """Extra lines of the compute report (longtail/cli/flops.py), given the trunk/branch/head cost."""
        return []


@dataclass
class BaseWeights:
    """Where a model's pretrained weights come from: the file's identity (library, model, tag, file, sha256) and the
    parameters loaded from it. Checkpoints leave out those parameters while they are frozen (core/build.py
    model_state) and store the identity instead; loading such a checkpoint rebuilds the model from the same file."""

    identity: dict[str, Any]
    parameters: list[nn.Parameter] = field(default_factory=list, repr=False)

    def names(self, model: nn.Module) -> set[str]:
        """State-dict names of ``model``'s parameters that hold the file's values."""
        own = {id(p) for p in self.parameters}
        return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in own}

    def frozen_names(self, model: nn.Module) -> set[str]:
        """The base parameters that are not trained (left out of checkpoints)."""
        own = {id(p) for p in self.parameters if not p.requires_grad}
        return {name for name, p in model.named_parameters(remove_duplicate=False) if id(p) in own}

    def forget(self, model: nn.Module, names: Iterable[str]) -> None:
        """Parameters overwritten from another source (init_from) no longer hold the file's values."""
        params = dict(model.named_parameters(remove_duplicate=False))
        dropped = {id(params[n]) for n in names if n in params}
        self.parameters = [p for p in self.parameters if id(p) not in dropped]


class MultiExpertModel(nn.Module):
    """Generic multi-expert network over any backbone split into a shared ``trunk`` and a per-expert ``branch``.

    ``branch`` is built from expert layers (model/layers.py) for ``num_experts`` experts. ``batched_experts=True``
    runs all experts in one grouped pass; ``False`` runs them one by one with views of the same weights.
    ``forward`` returns ``{"output": mean of expert logits (B, C), "logits": (B, E, C), "feat": (B, E, D)}``, then
    lets every attached extension (``add_extension``) adjust the outputs or replace eval-mode inference.

    A branch with ``runs_experts = True`` takes the trunk output itself and returns pooled features: (B, E, D) for
    ``expert=None``, (B, D) for one expert (foundation backbones, model/foundation.py). ``base_weights``: the
    pretrained file the trunk and branch were loaded from (None: random init or a framework checkpoint).
    """

    def __init__(self, trunk: nn.Module, branch: nn.Module, feature_dim: int, num_classes: int, num_experts: int = 1,
                 use_norm: bool = True, s: float = 30.0, batched_experts: bool = False) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"arch.args.num_experts must be >= 1, got {num_experts}")
        self.trunk, self.branch = trunk, branch
        self.num_experts, self.num_classes, self.feature_dim = num_experts, num_classes, feature_dim
        self.batched_experts = batched_experts
        self.head = ExpertHead(num_experts, feature_dim, num_classes, cosine=use_norm, scale=s)
        self.extension_names: list[str] = []
        self.base_weights: BaseWeights | None = None

    def add_extension(self, name: str, extension: ModelExtension) -> None:
        """Attach ``extension`` as submodule ``name`` (its parameters are saved under ``name.``)."""
        if hasattr(self, name) and name not in self.extension_names:
            raise ValueError(f"cannot attach an extension named {name!r}: the model already has that attribute")
        self.add_module(name, extension)
        if name not in self.extension_names:
            self.extension_names.append(name)

    def extensions(self) -> list[ModelExtension]:
        """The attached extensions, in the order they were added."""
        return [getattr(self, name) for name in self.extension_names]

    @property
    def per_sample_outputs(self) -> tuple[str, ...]:
        """Per-sample eval outputs the extensions add (evaluation collects them)."""
        return tuple(key for ext in self.extensions() for key in ext.per_sample_outputs)

    @property
    def provides(self) -> tuple[str, ...]:
        """Every output key of a training forward."""
        return ("output", "logits", "feat") + tuple(key for ext in self.extensions() for key in ext.provides)

    def expert_features(self, shared: torch.Tensor, expert: int) -> torch.Tensor:
        """Pooled features (B, D) of one expert from the trunk output (used by early exit and the looped path)."""
        out = self.branch(shared, expert)
        return out.mean(dim=(2, 3)) if out.dim() == 4 else out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled per-expert features (B, E, D)."""
        shared = self.trunk(x)
        if getattr(self.branch, "runs_experts", False):
            return self.branch(shared, None)
        if self.num_experts == 1 or self.batched_experts:
            stacked = shared.repeat(1, self.num_experts, 1, 1) if self.num_experts > 1 else shared
            pooled = self.branch(stacked, None).mean(dim=(2, 3))
            return pooled.view(x.shape[0], self.num_experts, self.feature_dim)
        return torch.stack([self.expert_features(shared, e) for e in range(self.num_experts)], dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        extensions = self.extensions()
        out = None
        if not self.training:
            out = next((o for o in (ext.inference(self, x) for ext in extensions) if o is not None), None)
        if out is None:
            return self.from_features(self.features(x), x)
        for ext in extensions:
            out = ext.extend(self, x, out)
        return out

    def from_features(self, feat: torch.Tensor, x: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The outputs from pooled features (B, E, D): heads, then the extensions (training on cached features
        calls this with the features of a frozen backbone and no images)."""
        logits = self.head(feat)
        out = {"output": logits.mean(dim=1), "logits": logits, "feat": feat}
        for ext in self.extensions():
            out = ext.extend(self, x, out)
        return out
