"""CIFAR-style ResNets (6n+2 layers, option-A shortcuts) split into a shared trunk and per-expert stages."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.model.experts import MultiExpertModel
from longtail.model.layers import ExpertBatchNorm2d, ExpertConv2d, ExpertHead, ExpertSequential, residual_relu
from longtail.registry import MODELS


def option_a_shortcut(x: torch.Tensor, out_channels: int, groups: int) -> torch.Tensor:
    """Parameter-free shortcut: take even pixels, zero-pad each group's channels symmetrically to out_channels.

    The result keeps the input's memory format (channels_last stays channels_last, so the residual add is fast).
    """
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    sub = x[:, :, ::2, ::2]
    b, c, h, w = sub.shape
    per_group = c // groups
    pad = (out_channels - per_group) // 2
    out = torch.zeros((b, groups * out_channels, h, w), dtype=x.dtype, device=x.device).contiguous(memory_format=fmt)
    out.view(b, groups, out_channels, h, w)[:, :, pad:pad + per_group] = sub.reshape(b, groups, per_group, h, w)
    return out


class CifarBasicBlock(nn.Module):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus identity or option-A shortcut, then ReLU."""

    def __init__(self, num_experts: int, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.num_experts, self.planes = num_experts, planes
        self.conv1 = ExpertConv2d(num_experts, in_planes, planes, 3, stride, 1)
        self.bn1 = ExpertBatchNorm2d(num_experts, planes)
        self.conv2 = ExpertConv2d(num_experts, planes, planes, 3, 1, 1)
        self.bn2 = ExpertBatchNorm2d(num_experts, planes)
        self.downsample = stride != 1 or in_planes != planes

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, expert), expert), inplace=True)
        out = self.bn2(self.conv2(out, expert), expert)
        groups = self.num_experts if expert is None else 1
        shortcut = option_a_shortcut(x, self.planes, groups) if self.downsample else x
        return residual_relu(out, shortcut)


class Stem(nn.Module):
    """3x3 conv -> BN -> ReLU on the input image (one per expert when the experts share nothing)."""

    def __init__(self, in_channels: int, width: int, num_experts: int = 1) -> None:
        super().__init__()
        self.conv = ExpertConv2d(num_experts, in_channels, width, 3, 1, 1)
        self.bn = ExpertBatchNorm2d(num_experts, width)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x, expert), expert), inplace=True)


def make_stage(num_experts: int, in_planes: int, planes: int, blocks: int, stride: int) -> ExpertSequential:
    """A stage of ``blocks`` basic blocks; the first one changes width/resolution."""
    layers = [CifarBasicBlock(num_experts, in_planes, planes, stride)]
    layers += [CifarBasicBlock(num_experts, planes, planes, 1) for _ in range(blocks - 1)]
    return ExpertSequential(*layers)


def init_cifar_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) for every conv and linear head weight, as in the reference CIFAR code."""
    for module in model.modules():
        if isinstance(module, ExpertConv2d):
            nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, ExpertHead) and not module.cosine:
            for e in range(module.weight.shape[0]):
                nn.init.kaiming_normal_(module.weight.data[e])


@MODELS.register("resnet_cifar")
def resnet_cifar(num_classes: int, in_channels: int = 3, depth: int = 32, num_experts: int = 1, use_norm: bool = True,
                 s: float = 30.0, reduce_dimension: bool = False, stem_width: int = 16,
                 layer2_output_dim: int | None = None, layer3_output_dim: int | None = None,
                 batched_experts: bool = False, independent_experts: bool = False) -> MultiExpertModel:
    """CIFAR ResNet-(6n+2): shared stem + stage 1, per-expert stages 2-3 and heads (widths 16/32/64, reduced 16/24/48).

    ``independent_experts``: nothing is shared, every expert is a complete network (stem and stage 1 per expert,
    the trunk is empty), as the separate networks of NCL."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"arch.args.depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    w2 = layer2_output_dim or (24 if reduce_dimension else 2 * stem_width)
    w3 = layer3_output_dim or (48 if reduce_dimension else 4 * stem_width)
    late = (make_stage(num_experts, stem_width, w2, n, 2), make_stage(num_experts, w2, w3, n, 2))
    if independent_experts:
        trunk = ExpertSequential()
        branch = ExpertSequential(Stem(in_channels, stem_width, num_experts),
                                  make_stage(num_experts, stem_width, stem_width, n, 1), *late)
    else:
        trunk = ExpertSequential(Stem(in_channels, stem_width), *make_stage(1, stem_width, stem_width, n, 1))
        branch = ExpertSequential(*late)
    model = MultiExpertModel(trunk, branch, w3, num_classes, num_experts, use_norm, s, batched_experts)
    init_cifar_weights(model)
    return model


@MODELS.register("resnet32")
def resnet32(num_classes: int, in_channels: int = 3, num_experts: int = 1, use_norm: bool = True, s: float = 30.0,
             reduce_dimension: bool = False, layer2_output_dim: int | None = None, layer3_output_dim: int | None = None,
             batched_experts: bool = False, independent_experts: bool = False) -> MultiExpertModel:
    """The reference CIFAR ResNet-32 (BalPoE/SADE/RIDE; ``independent_experts``: E complete networks, NCL)."""
    return resnet_cifar(num_classes, in_channels, 32, num_experts, use_norm, s, reduce_dimension, 16,
                        layer2_output_dim, layer3_output_dim, batched_experts, independent_experts)
