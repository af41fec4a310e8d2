"""SHIKE (Jin et al., CVPR 2023) as a plugin: the depth-wise knowledge fusion (DKF) backbone ``resnet_cifar_dkf`` and
SHIKE's learning-rate schedule ``cosine_after_warmup`` (docs/methods.md, SHIKE). Its loss (``shike``, decoupled
knowledge distillation) is in model/losses/shike.py; its second stage (classifier re-training with Balanced Softmax on
the frozen features) is ``init_from`` + ``balanced_softmax`` (configs/*/shike_rt.json).

DKF: a CIFAR ResNet whose stem, stage 1 and stage 2 are shared; every expert e has its own stage 3 and a "shallow
expert" that brings a shallower feature map to stage 3's resolution and width with strided 3x3 conv + BN layers
(even experts: the stage-1 output, two convs, the first with ReLU; odd experts: the stage-2 output, one conv with
ReLU). The expert's features are the element-wise product of its stage-3 map and its shallow map, average-pooled.
Blocks use projection shortcuts (1x1 conv + BN when the shape changes), as the official ResNet-32 (option 'B').
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from longtail.model.experts import MultiExpertModel
from longtail.model.layers import ExpertBatchNorm2d, ExpertConv2d, ExpertSequential
from longtail.model.resnet_cifar import Stem, init_cifar_weights
from longtail.model.resnet_imagenet import BasicBlock, make_layer
from longtail.registry import MODELS, SCHEDULERS
from longtail.utils.errors import ConfigError


class StridedConv(nn.Module):
    """3x3 conv with stride 2 -> BN (-> ReLU): halves the resolution, doubles the width."""

    def __init__(self, in_planes: int, planes: int, relu: bool) -> None:
        super().__init__()
        self.conv = ExpertConv2d(1, in_planes, planes, 3, 2, 1)
        self.bn = ExpertBatchNorm2d(1, planes)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.conv(x))
        return torch.relu(out) if self.relu else out


class ShallowExpert(nn.Sequential):
    """``depth`` strided convs from a shallow map to stage 3's shape; ReLU after every conv but the second."""

    def __init__(self, in_planes: int, depth: int) -> None:
        super().__init__(*(StridedConv(in_planes * 2 ** k, in_planes * 2 ** (k + 1), relu=k != 1) for k in range(depth)))


class TappedTrunk(nn.Module):
    """Stem -> stage 1 -> stage 2, returning both stage outputs (the shallow experts read them)."""

    def __init__(self, stem: nn.Module, stage1: ExpertSequential, stage2: ExpertSequential) -> None:
        super().__init__()
        self.stem, self.stage1, self.stage2 = stem, stage1, stage2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = self.stage1(self.stem(x))
        return out1, self.stage2(out1)


class FusionBranch(nn.Module):
    """Per expert: stage 3 on the stage-2 map, times the expert's shallow map (element-wise)."""

    def __init__(self, stage3: ExpertSequential, shallow: nn.ModuleList) -> None:
        super().__init__()
        self.stage3, self.shallow = stage3, shallow

    def forward(self, taps: tuple[torch.Tensor, torch.Tensor], expert: int) -> torch.Tensor:
        """Fused feature map (B, 4w, H/4, W/4) of one expert: expert e reads tap e mod 2 (stage 1 / stage 2)."""
        return self.stage3(taps[1], expert) * self.shallow[expert](taps[expert % 2])


class DepthFusionModel(MultiExpertModel):
    """MultiExpertModel whose trunk returns (stage-1, stage-2) maps; experts run one by one (their shallow paths
    differ)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled fused features (B, E, D)."""
        taps = self.trunk(x)
        return torch.stack([self.expert_features(taps, e) for e in range(self.num_experts)], dim=1)


@MODELS.register("resnet_cifar_dkf")
def resnet_cifar_dkf(num_classes: int, in_channels: int = 3, depth: int = 32, num_experts: int = 3,
                     use_norm: bool = True, s: float = 30.0, stem_width: int = 16) -> DepthFusionModel:
    """SHIKE's CIFAR ResNet-(6n+2) with depth-wise knowledge fusion: shared stem + stages 1-2, per-expert stage 3
    fused with a shallow expert, cosine (use_norm, scale s) or linear heads; widths w/2w/4w (w = stem_width)."""
    if (depth - 2) % 6 or depth < 8:
        raise ConfigError(f"arch.args.depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
    n, w = (depth - 2) // 6, stem_width
    trunk = TappedTrunk(Stem(in_channels, w), make_layer(BasicBlock, 1, w, w, n, 1, 1, 64),
                        make_layer(BasicBlock, 1, w, 2 * w, n, 2, 1, 64))
    shallow = nn.ModuleList(ShallowExpert(w * 2 ** (e % 2), 2 - e % 2) for e in range(num_experts))
    branch = FusionBranch(make_layer(BasicBlock, num_experts, 2 * w, 4 * w, n, 2, 1, 64), shallow)
    model = DepthFusionModel(trunk, branch, 4 * w, num_classes, num_experts, use_norm, s, batched_experts=False)
    init_cifar_weights(model)
    return model


def cosine_after_warmup_factor(epoch: int, T_max: int, warmup_epoch: int, warmup_start: float,
                               eta_min_ratio: float) -> float:
    """LR factor of 0-based epoch ``epoch``: linear from ``warmup_start`` (at epoch -1) to 1 (at ``warmup_epoch``),
    then a cosine from 1 at ``warmup_epoch`` to ``eta_min_ratio`` at ``T_max``."""
    if epoch < warmup_epoch:
        return warmup_start + (1.0 - warmup_start) * (epoch + 1) / (warmup_epoch + 1)
    progress = min(epoch - warmup_epoch, T_max - warmup_epoch) / max(T_max - warmup_epoch, 1)
    return eta_min_ratio + (1.0 - eta_min_ratio) * (1.0 + math.cos(math.pi * progress)) / 2.0


@SCHEDULERS.register("cosine_after_warmup")
def cosine_after_warmup(optimizer: torch.optim.Optimizer, T_max: int, warmup_epoch: int = 5, warmup_start: float = 0.0,
                        eta_min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """SHIKE's CosineAnnealingLRWarmup in closed form: linear warm-up to the peak lr (optimizer.args.lr) over
    ``warmup_epoch`` epochs, then cosine to 0 at T_max (stage 1: warmup_start 0; stage 2: 0.25, i.e. from
    0.0375 to the peak 0.1 as base_lr 0.05, warmup_lr 0.1)."""
    if T_max <= warmup_epoch:
        raise ConfigError(f"lr_scheduler.args.T_max ({T_max}) must exceed warmup_epoch ({warmup_epoch})")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: cosine_after_warmup_factor(e, T_max, warmup_epoch, warmup_start, eta_min_ratio))
