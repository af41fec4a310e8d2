"""Expert-batched layers: E experts' weights stored as one grouped tensor, run batched or one expert at a time.

Convention: with ``expert=None`` the input holds every expert's channels side by side, (B, E*C, H, W), and the layer
runs all experts in one grouped op; with ``expert=e`` the input is expert e's (B, C, H, W) and the layer uses views of
expert e's weights. Both paths share parameters, so they are interchangeable and checkpoints do not depend on the
mode. With E = 1 the layers are plain Conv2d / BatchNorm2d / Linear (same parameter names and shapes).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


class ExpertConv2d(nn.Module):
    """E independent Conv2d layers held as one grouped convolution weight (E*out, in/groups, k, k)."""

    def __init__(self, num_experts: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, groups: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.num_experts, self.in_channels, self.out_channels = num_experts, in_channels, out_channels
        self.stride, self.padding, self.groups = stride, padding, groups
        self.weight = nn.Parameter(torch.empty(num_experts * out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(num_experts * out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # PyTorch's Conv2d default; backbones re-init

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        if expert is None:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups * self.num_experts)
        sl = slice(expert * self.out_channels, (expert + 1) * self.out_channels)
        bias = self.bias[sl] if self.bias is not None else None
        return F.conv2d(x, self.weight[sl], bias, self.stride, self.padding, 1, self.groups)

    def extra_repr(self) -> str:
        return (f"experts={self.num_experts}, {self.in_channels}->{self.out_channels}, k={self.weight.shape[-1]}, "
                f"stride={self.stride}, groups={self.groups}")


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward also sums (each rank's inputs influence every rank's loss)."""

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class ExpertBatchNorm2d(nn.Module):
    """E independent BatchNorm2d layers; batch statistics are per expert in both execution modes.

    With ``sync = True`` (SyncBatchNorm, set by ``trainer.distributed.convert_sync_batchnorm``) training-mode
    statistics are computed over the batches of all processes of the default process group.
    """

    def __init__(self, num_experts: int, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_experts, self.num_features, self.eps, self.momentum = num_experts, num_features, eps, momentum
        self.sync = False
        total = num_experts * num_features
        self.weight = nn.Parameter(torch.ones(total))
        self.bias = nn.Parameter(torch.zeros(total))
        self.register_buffer("running_mean", torch.zeros(total))
        self.register_buffer("running_var", torch.ones(total))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        if self.training and expert in (None, 0):
            self.num_batches_tracked.add_(1)
        if expert is None:
            sl = slice(None)
        else:
            sl = slice(expert * self.num_features, (expert + 1) * self.num_features)
        if self.sync and self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return self._synced(x, sl)
        # running-stat views are updated in place, so per-expert calls write into the shared buffers
        return F.batch_norm(x, self.running_mean[sl], self.running_var[sl], self.weight[sl], self.bias[sl],
                            self.training, self.momentum, self.eps)

    def _synced(self, x: torch.Tensor, sl: slice) -> torch.Tensor:
        """Training-mode BN with mean/variance over all processes (differentiable all-reduces, fp32 statistics)."""
        xf = x.float()
        count = xf.new_full((1,), x.numel() / x.shape[1])  # a fill on the device, not a host-to-device copy
        totals = _AllReduceSum.apply(torch.cat([xf.sum(dim=(0, 2, 3)), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / n
        with torch.no_grad():
            self.running_mean[sl].mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var[sl].mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1).clamp_min(1))
        scale = self.weight[sl] * torch.rsqrt(var + self.eps)
        return (centred * scale.view(1, -1, 1, 1) + self.bias[sl].view(1, -1, 1, 1)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"experts={self.num_experts}, features={self.num_features}"


def residual_relu(out: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """ReLU(out + shortcut), written into ``out``: a BN output is not saved for backward, so no new activation."""
    return F.relu_(out.add_(shortcut))


class ExpertSequential(nn.Sequential):
    """nn.Sequential that passes the ``expert`` argument to every child."""

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:  # type: ignore[override]
        for module in self:
            x = module(x, expert)
        return x


class ExpertHead(nn.Module):
    """Per-expert classifiers on pooled features (B, E, D) -> logits (B, E, C).

    ``cosine=True`` is the NormedLinear head: logits = s * <x/|x|, w_c/|w_c|>, weight (E, D, C) without bias,
    initialised uniform(-1, 1) with unit-norm class columns. Otherwise a linear layer with bias (weight (E, C, D)).
    """

    def __init__(self, num_experts: int, in_features: int, num_classes: int, cosine: bool = True, scale: float = 30.0) -> None:
        super().__init__()
        self.cosine, self.scale = cosine, scale if cosine else 1.0
        if cosine:
            weight = torch.empty(num_experts, in_features, num_classes).uniform_(-1, 1)
            self.weight = nn.Parameter(weight / weight.norm(dim=1, keepdim=True))
            self.bias = None
        else:
            bound = 1.0 / math.sqrt(in_features)
            self.weight = nn.Parameter(torch.empty(num_experts, num_classes, in_features).uniform_(-bound, bound))
            self.bias = nn.Parameter(torch.empty(num_experts, num_classes).uniform_(-bound, bound))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            x = F.normalize(features, dim=-1)
            w = F.normalize(self.weight, dim=1)
            return self.scale * torch.einsum("bed,edc->bec", x, w)
        return torch.einsum("bed,ecd->bec", features, self.weight) + self.bias

    def forward_expert(self, features: torch.Tensor, expert: int) -> torch.Tensor:
        """Logits (B, C) of one expert from its pooled features (B, D) (early-exit inference)."""
        if self.cosine:
            return self.scale * F.normalize(features, dim=-1) @ F.normalize(self.weight[expert], dim=0)
        return features @ self.weight[expert].t() + self.bias[expert]

    def extra_repr(self) -> str:
        return f"cosine={self.cosine}, scale={self.scale}, weight={tuple(self.weight.shape)}"
