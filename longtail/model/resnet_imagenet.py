"""ImageNet-style ResNets / ResNeXts (docs/methods.md, backbones): shared stem + layer1 + layer2, per-expert layer3 + layer4.

Module names mirror torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) under
``trunk.`` and ``branch.``, so a torchvision state dict maps onto the trunk and onto every expert's copy of the late
stages (``torchvision_resnet`` weight format, used by ``init_from`` for the pretrained Places-LT ResNet-152).
Pooling is a global average (identical to the reference's fixed 7x7 pool at 224 pixels, and valid for any size).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.model.experts import MultiExpertModel
from longtail.model.layers import ExpertBatchNorm2d, ExpertConv2d, ExpertSequential, residual_relu
from longtail.registry import MODELS, WEIGHT_FORMATS
from longtail.utils.checkpoint import load_weights_file
from longtail.utils.errors import CheckpointError


def _conv_bn(num_experts: int, in_planes: int, out_planes: int, kernel: int, stride: int = 1,
             groups: int = 1) -> tuple[ExpertConv2d, ExpertBatchNorm2d]:
    """A bias-free conv (padding kernel // 2) and the BN that follows it."""
    conv = ExpertConv2d(num_experts, in_planes, out_planes, kernel, stride, kernel // 2, groups)
    return conv, ExpertBatchNorm2d(num_experts, out_planes)


def _projection(num_experts: int, in_planes: int, out_planes: int, stride: int) -> ExpertSequential | None:
    """1x1 conv (with stride) + BN shortcut when the shape changes, else None (identity)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return ExpertSequential(*_conv_bn(num_experts, in_planes, out_planes, 1, stride))


class BasicBlock(nn.Module):
    """3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN, + shortcut, ReLU (expansion 1)."""

    expansion = 1

    def __init__(self, num_experts: int, in_planes: int, planes: int, stride: int = 1, groups: int = 1,
                 width_per_group: int = 64) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("BasicBlock supports only groups=1 and width_per_group=64 (ResNeXt uses bottlenecks)")
        self.conv1, self.bn1 = _conv_bn(num_experts, in_planes, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(num_experts, planes, planes, 3)
        self.downsample = _projection(num_experts, in_planes, planes, stride)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, expert), expert), inplace=True)
        out = self.bn2(self.conv2(out, expert), expert)
        shortcut = x if self.downsample is None else self.downsample(x, expert)
        return residual_relu(out, shortcut)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, grouped for ResNeXt; "v1.5") -> 1x1 to 4*planes, each followed by BN, + shortcut, ReLU."""

    expansion = 4

    def __init__(self, num_experts: int, in_planes: int, planes: int, stride: int = 1, groups: int = 1,
                 width_per_group: int = 64) -> None:
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        self.conv1, self.bn1 = _conv_bn(num_experts, in_planes, width, 1)
        self.conv2, self.bn2 = _conv_bn(num_experts, width, width, 3, stride, groups)
        self.conv3, self.bn3 = _conv_bn(num_experts, width, planes * self.expansion, 1)
        self.downsample = _projection(num_experts, in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, expert), expert), inplace=True)
        out = F.relu(self.bn2(self.conv2(out, expert), expert), inplace=True)
        out = self.bn3(self.conv3(out, expert), expert)
        shortcut = x if self.downsample is None else self.downsample(x, expert)
        return residual_relu(out, shortcut)


def make_layer(block: type[nn.Module], num_experts: int, in_planes: int, planes: int, blocks: int, stride: int,
               groups: int, width_per_group: int) -> ExpertSequential:
    """One stage of ``blocks`` blocks; the first one changes width and resolution."""
    out_planes = planes * block.expansion
    layers = [block(num_experts, in_planes, planes, stride, groups, width_per_group)]
    layers += [block(num_experts, out_planes, planes, 1, groups, width_per_group) for _ in range(blocks - 1)]
    return ExpertSequential(*layers)


class ImageNetTrunk(nn.Module):
    """Shared part: 7x7/2 conv -> BN -> ReLU -> 3x3/2 max-pool -> layer1 -> layer2 (-> layer3 when shared)."""

    def __init__(self, conv1: ExpertConv2d, bn1: ExpertBatchNorm2d, stages: dict[str, ExpertSequential]) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv1, bn1
        self.stage_names = list(stages)
        for name, stage in stages.items():
            self.add_module(name, stage)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x)), inplace=True), 3, 2, 1)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


class ImageNetStem(nn.Module):
    """Per-expert stem (experts that share nothing): 7x7/2 conv -> BN -> ReLU -> 3x3/2 max-pool."""

    def __init__(self, num_experts: int, in_channels: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = ExpertConv2d(num_experts, in_channels, 64, 7, 2, 3), ExpertBatchNorm2d(num_experts, 64)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x, expert), expert), inplace=True), 3, 2, 1)


class ImageNetBranch(nn.Module):
    """Per-expert late stages (layer3 + layer4, or layer4 only when layer3 is shared)."""

    def __init__(self, stages: dict[str, ExpertSequential]) -> None:
        super().__init__()
        self.stage_names = list(stages)
        for name, stage in stages.items():
            self.add_module(name, stage)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x, expert)
        return x


def init_imagenet_weights(model: nn.Module) -> None:
    """Conv weights ~ N(0, sqrt(2 / (k*k*out_channels))) per expert (fan-out); BN 1/0 and heads keep their init."""
    for module in model.modules():
        if isinstance(module, ExpertConv2d):
            k = module.weight.shape[-1]
            module.weight.data.normal_(0.0, math.sqrt(2.0 / (k * k * module.out_channels)))


def imagenet_resnet(block: type[nn.Module], layers: tuple[int, int, int, int], num_classes: int, in_channels: int = 3,
                    num_experts: int = 1, use_norm: bool = True, s: float = 30.0, reduce_dimension: bool = False,
                    layer3_output_dim: int | None = None, layer4_output_dim: int | None = None, groups: int = 1,
                    width_per_group: int = 64, share_layer3: bool = False, batched_experts: bool = False,
                    independent_experts: bool = False) -> MultiExpertModel:
    """Build the multi-expert network; planes 64/128/L3/L4 with L3/L4 = 256/512 (reduced: 192/384).
    ``independent_experts``: nothing shared (stem, layer1 and layer2 per expert too; the trunk is empty)."""
    l3 = layer3_output_dim or (192 if reduce_dimension else 256)
    l4 = layer4_output_dim or (384 if reduce_dimension else 512)
    if independent_experts and share_layer3:
        raise ValueError("arch.args.independent_experts and share_layer3 exclude each other")
    conv1 = ExpertConv2d(1, in_channels, 64, 7, 2, 3)
    bn1 = ExpertBatchNorm2d(1, 64)
    exp = block.expansion
    shared = {"layer1": make_layer(block, 1, 64, 64, layers[0], 1, groups, width_per_group),
              "layer2": make_layer(block, 1, 64 * exp, 128, layers[1], 2, groups, width_per_group)}
    layer3_experts = 1 if share_layer3 else num_experts
    layer3 = make_layer(block, layer3_experts, 128 * exp, l3, layers[2], 2, groups, width_per_group)
    layer4 = make_layer(block, num_experts, l3 * exp, l4, layers[3], 2, groups, width_per_group)
    if independent_experts:
        early = {"layer1": make_layer(block, num_experts, 64, 64, layers[0], 1, groups, width_per_group),
                 "layer2": make_layer(block, num_experts, 64 * exp, 128, layers[1], 2, groups, width_per_group)}
        trunk = ExpertSequential()
        branch = ImageNetBranch({"stem": ImageNetStem(num_experts, in_channels), **early, "layer3": layer3,
                                 "layer4": layer4})
    elif share_layer3:
        trunk, branch = ImageNetTrunk(conv1, bn1, {**shared, "layer3": layer3}), ImageNetBranch({"layer4": layer4})
    else:
        trunk, branch = ImageNetTrunk(conv1, bn1, shared), ImageNetBranch({"layer3": layer3, "layer4": layer4})
    model = MultiExpertModel(trunk, branch, l4 * exp, num_classes, num_experts, use_norm, s, batched_experts)
    init_imagenet_weights(model)
    return model


def _register(name: str, block: type[nn.Module], layers: tuple[int, int, int, int], groups: int = 1,
              width_per_group: int = 64) -> None:
    """Register one depth as a model builder with the common keyword arguments."""

    def build(num_classes: int, in_channels: int = 3, num_experts: int = 1, use_norm: bool = True, s: float = 30.0,
              reduce_dimension: bool = False, layer3_output_dim: int | None = None,
              layer4_output_dim: int | None = None, share_layer3: bool = False,
              batched_experts: bool = False, independent_experts: bool = False) -> MultiExpertModel:
        return imagenet_resnet(block, layers, num_classes, in_channels, num_experts, use_norm, s, reduce_dimension,
                               layer3_output_dim, layer4_output_dim, groups, width_per_group, share_layer3, batched_experts,
                               independent_experts)

    kind = f"ResNeXt ({groups}x{width_per_group}d)" if groups > 1 else "ResNet"
    build.__name__ = name
    build.__doc__ = (f"{kind} {block.__name__} {list(layers)}: shared stem + layer1-2, per-expert layer3-4 and heads "
                     "(reduce_dimension: layer3/4 planes 192/384; independent_experts: E complete networks).")
    MODELS.register(name)(build)


_register("resnet10", BasicBlock, (1, 1, 1, 1))
_register("resnet50", Bottleneck, (3, 4, 6, 3))
_register("resnet152", Bottleneck, (3, 8, 36, 3))
_register("resnext50", Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4)
_register("resnext152", Bottleneck, (3, 8, 36, 3), groups=32, width_per_group=4)


def torchvision_key(key: str) -> str | None:
    """Our parameter name -> the torchvision ResNet name it comes from (None for the heads)."""
    prefix, _, rest = key.partition(".")
    return rest if prefix in ("trunk", "branch") else None


@WEIGHT_FORMATS.register("torchvision_resnet")
def load_torchvision_resnet(path: str, model: nn.Module) -> dict[str, Any]:
    """A torchvision ResNet/ResNeXt state dict mapped onto the trunk and copied into EVERY expert's late stages.

    Keys that the file lacks are simply not returned (``init_from`` reports them); the classifier ``fc.*`` is
    never used (heads stay freshly initialised). Shapes must match one expert's, else the error names the key.
    """
    source = load_weights_file(path, "pretrained weights (init_from.checkpoint; see data_txt/README.md)")
    own = model.state_dict()
    weights: dict[str, Any] = {}
    for key, target in own.items():
        src_key = torchvision_key(key)
        if src_key is None or src_key not in source:
            continue
        value = source[src_key]
        copies = getattr(model, "num_experts", 1) if key.startswith("branch.") else 1
        if value.dim() and value.shape[0] * copies == target.shape[0] and value.shape[1:] == target.shape[1:]:
            weights[key] = value.repeat(copies, *([1] * (value.dim() - 1)))
        elif value.shape == target.shape:
            weights[key] = value
        else:
            raise CheckpointError(f"{path}: '{src_key}' has shape {tuple(value.shape)} but '{key}' holds {copies} expert "
                             f"copies of shape {tuple(target.shape)}; is it the same architecture (depth, ResNet vs "
                             "ResNeXt, reduce_dimension false)?")
    if not weights:
        raise CheckpointError(f"{path}: no torchvision ResNet keys (conv1.weight, layer1.0.conv1.weight, ...) found; "
                         "save the file with torch.save(torchvision_model.state_dict(), path)")
    return weights
