"""Weights of the ORIGINAL BalPoE / SADE / RIDE repos' checkpoints mapped onto this framework's MultiExpertModel.

Their checkpoints (``checkpoint-epoch*.pth``, ``model_best.pth``; docs: METHODS.md 9.4) hold one module per expert
(``backbone.layer2s.<e>...``, ``backbone.linears.<e>.weight``), optionally under ``module.`` (DataParallel). Here the
E experts of a layer are one grouped tensor (model/layers.py), so per-expert tensors are concatenated / stacked:

==========================================  ============================================  ==============================
original (after ``module.`` / ``backbone.``)   this framework                                    per-expert -> grouped
==========================================  ============================================  ==============================
CIFAR ``conv1`` / ``bn1``                    ``trunk.0.conv`` / ``trunk.0.bn``                 shared
CIFAR ``layer1.<i>.*``                       ``trunk.<i+1>.*``                                 shared
CIFAR ``layer2s.<e>.*`` / ``layer3s.<e>.*``  ``branch.0.*`` / ``branch.1.*``                   conv (E*out, in, k, k), BN (E*C,)
CIFAR single ``layer2.*`` / ``layer3.*``     ``branch.0.*`` / ``branch.1.*``                   E = 1
ImageNet ``conv1``/``bn1``/``layer1``/``layer2``  ``trunk.conv1``/``trunk.bn1``/``trunk.layer1``/...  shared
ImageNet ``layer3s.<e>.*``, ``layer4s.<e>.*``  ``branch.layer3.*``, ``branch.layer4.*``         grouped (ResNeXt too)
ImageNet ``layer3.*`` (share_layer3)         ``trunk.layer3.*``                                shared
ImageNet single ``layer3.*`` / ``layer4.*``  ``branch.layer3.*`` / ``branch.layer4.*``         E = 1
``linears.<e>.weight`` NormedLinear (D, C)   ``head.weight`` (E, D, C)                         stacked
``linears.<e>.weight``/``bias`` Linear       ``head.weight`` (E, C, D) / ``head.bias`` (E, C)  stacked
RIDE EA ``expert_help_pred_hidden_fcs.<k>``  ``router.hidden.<k>``                              (arch.router block)
RIDE EA ``expert_help_pred_fc``              ``router.output``                                 shared
==========================================  ============================================  ==============================

BN ``num_batches_tracked`` of grouped layers is expert 0's counter (it is not used in eval mode). A shared CIFAR
stage of BalPoE (``share_layer2``/``share_layer3``) appears once per expert in the state dict and becomes E equal
copies (identical outputs). The normalisation scale ``s`` is not in the weights: build the model with the run's ``s``.

Not mappable (CheckpointError names the keys): CIFAR option-B shortcuts (``ResNet32Model_B``), BalPoE's 3x3-stem
``reduce_first_kernel`` ResNet-34, per-decision router output layers (``share_expert_help_pred_fc: false``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from longtail.evaluation.hooks import ForeignWeights
from longtail.registry import CHECKPOINT_READERS, WEIGHT_FORMATS
from longtail.utils.checkpoint import strip_prefixes, unwrap_model
from longtail.utils.errors import CheckpointError
from longtail.utils.foreign import ForeignObject, load_foreign_object, read_foreign_checkpoint

WRAPPER_PREFIXES = ("module.", "backbone.")  # DataParallel, then the original repos' ``Model.backbone``


def strip_original_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove leading ``module.`` / ``backbone.`` (in any order, repeatedly) from every key."""
    return strip_prefixes(state_dict, WRAPPER_PREFIXES)


def _target_layout(own: dict[str, torch.Tensor]) -> str:
    """'cifar' or 'imagenet' from this framework's model keys."""
    if "trunk.0.conv.weight" in own:
        return "cifar"
    if "trunk.conv1.weight" in own:
        return "imagenet"
    raise CheckpointError("original checkpoints map only onto the resnet_cifar/resnet32 and ImageNet ResNet/ResNeXt "
                          "models (arch.type resnet32, resnet_cifar, resnet10, resnet50, resnext50, ...)")


def _source_layout(keys: list[str]) -> str:
    """'cifar' or 'imagenet' from the original keys (ImageNet networks have a 4th stage)."""
    return "imagenet" if any(re.match(r"layer4s?\.", k) for k in keys) else "cifar"


Rule = tuple[str, Callable[[re.Match], tuple[str, int | None]]]


def _rules(layout: str, shared_layer3: bool) -> list[Rule]:
    """(regex, match -> (target key, expert index or None for shared tensors)) for one source layout."""
    common: list[Rule] = [
        (r"linears\.(\d+)\.(weight|bias)$", lambda m: (f"head.{m[2]}", int(m[1]))),
        (r"linear\.(weight|bias)$", lambda m: (f"head.{m[1]}", 0)),
        (r"expert_help_pred_hidden_fcs\.(\d+)\.(weight|bias)$", lambda m: (f"router.hidden.{m[1]}.{m[2]}", None)),
        (r"expert_help_pred_fc\.(weight|bias)$", lambda m: (f"router.output.{m[1]}", None)),
    ]
    if layout == "cifar":
        return [
            (r"conv1\.weight$", lambda m: ("trunk.0.conv.weight", None)),
            (r"bn1\.(.+)$", lambda m: (f"trunk.0.bn.{m[1]}", None)),
            (r"layer1\.(\d+)\.(.+)$", lambda m: (f"trunk.{int(m[1]) + 1}.{m[2]}", None)),
            (r"layer2s\.(\d+)\.(.+)$", lambda m: (f"branch.0.{m[2]}", int(m[1]))),
            (r"layer3s\.(\d+)\.(.+)$", lambda m: (f"branch.1.{m[2]}", int(m[1]))),
            (r"layer2\.(.+)$", lambda m: (f"branch.0.{m[1]}", 0)),
            (r"layer3\.(.+)$", lambda m: (f"branch.1.{m[1]}", 0)),
        ] + common
    return [
        (r"(conv1\.weight|bn1\..+|layer1\..+|layer2\..+)$", lambda m: (f"trunk.{m[1]}", None)),
        (r"layer3\.(.+)$", lambda m: (f"trunk.layer3.{m[1]}", None) if shared_layer3 else (f"branch.layer3.{m[1]}", 0)),
        (r"layer3s\.(\d+)\.(.+)$", lambda m: (f"branch.layer3.{m[2]}", int(m[1]))),
        (r"layer4s\.(\d+)\.(.+)$", lambda m: (f"branch.layer4.{m[2]}", int(m[1]))),
        (r"layer4\.(.+)$", lambda m: (f"branch.layer4.{m[1]}", 0)),
    ] + common


def _hint(source_keys: list[str], shared_layer3: bool) -> str:
    """Why keys fit no layout, for the known unsupported variants."""
    if shared_layer3 and any(k.startswith("layer3s.") for k in source_keys):
        return " The checkpoint has one layer3 per expert: set arch.args.share_layer3 false."
    if any(".shortcut." in k for k in source_keys):
        return (" The checkpoint uses option-B (1x1 conv) shortcuts (ResNet32Model_B); this framework's CIFAR ResNets "
                "use the parameter-free option-A shortcut only.")
    if any(k.startswith("expert_help_pred_fcs.") for k in source_keys):
        return (" The router has one output layer per decision (share_expert_help_pred_fc false); this framework's "
                "router shares one output layer.")
    return ""


def convert_original_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The original repos' state dict (keys as saved, ``module.``/``backbone.`` prefixes allowed) as a state dict of
    ``model`` (a MultiExpertModel of the matching architecture).

    Every trunk/branch/head tensor of ``model`` is produced (else CheckpointError naming what is missing and the
    arch args to check); extension tensors (``router.``) are produced when the checkpoint has them and omitted
    otherwise (e.g. a RIDE stage-1 checkpoint for a router model). Keys that fit no known layout, expert counts and
    shapes that differ from ``model`` raise CheckpointError.
    """
    source = strip_original_prefixes(dict(state_dict))
    if not source:
        raise CheckpointError("the checkpoint's state_dict is empty")
    model = unwrap_model(model)
    own = model.state_dict()
    target_layout = _target_layout(own)
    layout = _source_layout(list(source))
    if layout != target_layout:
        kinds = {"cifar": "a CIFAR ResNet-32 (stages layer1-3)", "imagenet": "an ImageNet ResNet/ResNeXt (layer1-4)"}
        raise CheckpointError(f"the checkpoint holds {kinds[layout]} but the model is {kinds[target_layout]}; "
                              "set arch.type to the checkpoint's architecture")
    shared_layer3 = any(k.startswith("trunk.layer3.") for k in own)
    rules = [(re.compile(pattern), fn) for pattern, fn in _rules(layout, shared_layer3)]

    pieces: dict[str, dict[int | None, torch.Tensor]] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in source.items():
        for pattern, fn in rules:
            match = pattern.match(key)
            if match:
                target, expert = fn(match)
                break
        else:
            unknown.append(key)
            continue
        if target not in own and target != "head.bias":
            unknown.append(key)
            continue
        if expert in pieces.setdefault(target, {}):
            raise CheckpointError(f"two checkpoint tensors map onto {target} ({origin[target]} and {key})")
        pieces[target][expert] = value
        origin.setdefault(target, key)
    if unknown:
        router_hint = ""
        if any(k.startswith("expert_help_pred") for k in unknown) and not any(k.startswith("router.") for k in own):
            router_hint = (" The checkpoint has RIDE's expert-assignment router (expert_help_pred*): add "
                           f"\"router\": {{\"type\": \"ride\", \"args\": {{\"top_k\": {_router_top_k(source)}}}}} "
                           "to arch.")
        raise CheckpointError(f"{len(unknown)} checkpoint keys fit no known layout of the original repos or have no "
                              f"counterpart in the model: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}."
                              f"{router_hint}{_hint(unknown, shared_layer3)} Check arch.type and arch.args (depth, widths, "
                              "share_layer3).")

    source_bias = any(re.match(r"linears?\.(\d+\.)?bias$", k) for k in source)
    if "head.bias" in own and not source_bias:
        raise CheckpointError("the checkpoint's classifiers are NormedLinear (cosine, no bias) but the model's are "
                              "linear: set arch.args.use_norm true")
    if source_bias and "head.bias" not in own:
        raise CheckpointError("the checkpoint's classifiers are nn.Linear with bias but the model's are cosine: set "
                              "arch.args.use_norm false")
    num_experts = getattr(model, "num_experts", 1)
    cosine = bool(getattr(getattr(model, "head", None), "cosine", False))
    out: dict[str, torch.Tensor] = {}
    for target, parts in pieces.items():
        if None in parts:
            value = parts[None]
        else:
            experts = sorted(parts)
            if experts != list(range(num_experts)):
                where = origin[target]
                if target.startswith("branch.layer3.") and where.startswith("layer3.") and num_experts > 1:
                    raise CheckpointError("the checkpoint shares layer3 among its experts (share_layer3): set "
                                          "arch.args.share_layer3 true")
                raise CheckpointError(f"the checkpoint has {len(experts)} expert(s) for {where} but the model has "
                                      f"{num_experts} (arch.args.num_experts)")
            tensors = [parts[e] for e in experts]
            if target.endswith("num_batches_tracked"):
                value = tensors[0]
            elif target.startswith("head."):
                value = _stack_head(target, tensors, cosine)
            else:
                value = torch.cat(tensors, dim=0)
        if value.shape != own[target].shape and target.startswith("router."):
            raise CheckpointError(f"{origin[target]} gives {target} the shape {tuple(value.shape)}, the model has "
                                  f"{tuple(own[target].shape)}: the checkpoint's router uses top_choices_num "
                                  f"{_router_top_k(source)} (arch.router.args.top_k) and hidden size "
                                  f"{_router_hidden(source)} (arch.router.args.hidden_dim)")
        if value.shape != own[target].shape:
            raise CheckpointError(f"{origin[target]} gives {target} the shape {tuple(value.shape)}, the model has "
                                  f"{tuple(own[target].shape)}: check arch.args (num_classes, num_experts, "
                                  "reduce_dimension, layer*_output_dim, use_norm)")
        out[target] = value.to(own[target].dtype) if value.is_floating_point() else value
    missing = [k for k in own if k.split(".", 1)[0] in ("trunk", "branch", "head") and k not in out]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensors of the model, e.g. "
                              f"{', '.join(missing[:5])}: is it the same architecture (arch.type depth, "
                              "share_layer3)?")
    return out


def _router_hidden(source: dict[str, torch.Tensor]) -> int | str:
    """Hidden size of RIDE's router in the checkpoint."""
    weight = source.get("expert_help_pred_hidden_fcs.0.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else "?"


def _router_top_k(source: dict[str, torch.Tensor]) -> int | str:
    """``top_choices_num`` of RIDE's router in the checkpoint (its output layer reads top-k logits + hidden)."""
    weight, hidden = source.get("expert_help_pred_fc.weight"), _router_hidden(source)
    return int(weight.shape[1]) - hidden if weight is not None and isinstance(hidden, int) else "<top_choices_num>"


def _stack_head(target: str, tensors: list[torch.Tensor], cosine: bool) -> torch.Tensor:
    """Per-expert classifier tensors -> (E, D, C) NormedLinear / (E, C, D) Linear weight, (E, C) bias."""
    if target == "head.weight" and cosine and any(t.dim() != 2 for t in tensors):
        raise CheckpointError("unexpected classifier weight rank in the checkpoint")
    return torch.stack(tensors, dim=0)


def original_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON config the original run used (``config._config`` of its pickled ConfigParser), if readable."""
    config = checkpoint.get("config")
    if isinstance(config, ForeignObject) and isinstance(config.state, dict):
        data = config.state.get("_config")
        return data if isinstance(data, dict) else None
    return None


@WEIGHT_FORMATS.register("original")
def load_original_weights(path: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint of the original BalPoE/SADE/RIDE trainers (or a bare original state dict), read without
    executing its pickled objects (utils/foreign.py) and converted with :func:`convert_original_state_dict`."""
    obj, _skipped = load_foreign_object(Path(path))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        weights = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        weights = obj  # a bare state dict saved from the original model
    else:
        found = ", ".join(repr(k) for k in list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a checkpoint of the original repos (no 'state_dict' entry; found "
                              f"{found})")
    if not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: the state_dict holds entries that are not tensors")
    try:
        return convert_original_state_dict(weights, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


@CHECKPOINT_READERS.register("original_repos")
def read_original_checkpoint(path: Path) -> ForeignWeights | None:
    """A training checkpoint of the original BalPoE / SADE / RIDE code (``state_dict`` + pickled ConfigParser), read
    without unpickling its objects; None when the file is not one (the evaluator then reports its own error)."""
    try:
        state, skipped = read_foreign_checkpoint(path)
    except CheckpointError:
        return None
    description = (f"a checkpoint of the original BalPoE/SADE/RIDE code (weights read without unpickling its objects; "
                   f"skipped: {', '.join(skipped) or 'nothing'})")
    return ForeignWeights(description, lambda model: convert_original_state_dict(state["state_dict"], model))
