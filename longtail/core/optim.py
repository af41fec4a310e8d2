"""Optimizer and learning-rate schedule registries (schedules are stepped once per epoch, as in the reference)."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from longtail.registry import OPTIMIZERS, SCHEDULERS



class SGD(torch.optim.SGD):
    """torch's SGD, except that with ``fused`` every momentum buffer exists from the start, as zeros (the same first
    update as SGD's copy of the first gradient, since dampening is 0).

    torch's fused SGD creates the buffers with ``empty_like`` on its first step and leaves them unwritten when the
    GradScaler skips that step (inf/NaN gradients, common in fp16's first steps); the next steps then add
    uninitialised memory to the updates. A parameter whose buffer is missing while others have one (a first gradient
    after the first step, or a resumed checkpoint without it) is not handled by the fused step either.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._add_zero_momentum_buffers()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load the training state but keep this run's kernel choice (a checkpoint's ``fused``/``foreach`` would
        replace it, and a GradScaler set up for a fused step would then step unscaled gradients); then give the
        parameters without a momentum buffer a zero one (fused only)."""
        kernels = [{k: group.get(k) for k in ("fused", "foreach")} for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, flags in zip(self.param_groups, kernels):
            group.update(flags)
        self._add_zero_momentum_buffers()

    def _add_zero_momentum_buffers(self) -> None:
        """A zero momentum buffer for every parameter that has none (fused with momentum only)."""
        for group in self.param_groups:
            if group.get("fused") and group["momentum"] != 0:
                for param in group["params"]:
                    self.state[param].setdefault("momentum_buffer", torch.zeros_like(param))


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[torch.nn.Parameter], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
        nesterov: bool = True, foreach: bool | None = None, fused: bool | None = None) -> SGD:
    """SGD with momentum, Nesterov and weight decay on every parameter (incl. BN and cosine-head weights); ``fused``
    runs one kernel per parameter group (chosen automatically for fp16, see trainer.build.build_optimizer)."""
    return SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov and momentum > 0,
               foreach=None if fused else foreach, fused=fused)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[torch.nn.Parameter], lr: float = 1e-3, betas: list[float] = (0.9, 0.999),  # type: ignore[assignment]
          weight_decay: float = 0.05, eps: float = 1e-8, foreach: bool | None = None,
          fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay) on every parameter, e.g. for transformer backbones."""
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps,
                             foreach=None if fused else foreach, fused=fused)


def hold_lr_as_tensor(optimizer: torch.optim.Optimizer, as_tensor: bool) -> None:
    """Hold every group's learning rate as a 0-d CPU tensor (for a compiled update: a Python float is baked into the
    compiled code, so every schedule change would recompile it) or as a float (eager); the value is kept."""
    for group in optimizer.param_groups:
        lr = group["lr"]
        if as_tensor and not isinstance(lr, torch.Tensor):
            group["lr"] = torch.tensor(float(lr), dtype=torch.float64)
        elif not as_tensor and isinstance(lr, torch.Tensor):
            group["lr"] = float(lr)


def warmup_step_factor(epoch: int, step1: int, step2: int, gamma: float, warmup_epoch: int,
                       step3: int | None = None) -> float:
    """LR factor of the reference CustomLR for 0-based scheduler epoch ``epoch`` (trainer epoch t uses f(t-1))."""
    if step3 is not None and epoch >= step3:
        factor = gamma ** 3
    elif epoch >= step2:
        factor = gamma * gamma
    elif epoch >= step1:
        factor = gamma
    else:
        factor = 1.0
    if epoch < warmup_epoch:
        factor *= (epoch + 1) / warmup_epoch
    return factor


@SCHEDULERS.register("warmup_step")
def warmup_step(optimizer: torch.optim.Optimizer, step1: int, step2: int, gamma: float = 0.1,
                warmup_epoch: int = 5, step3: int | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_epoch`` epochs, then x gamma from epoch step1+1, x gamma^2 from step2+1 (and
    x gamma^3 from step3+1 when given, as the reference CustomLR's optional third step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: warmup_step_factor(e, step1, step2, gamma, warmup_epoch, step3))


def warmup_cosine_factor(epoch: int, t_max: int, warmup_epoch: int, eta_min_ratio: float) -> float:
    """Cosine factor from 1 to eta_min_ratio over t_max epochs, with an optional linear warm-up."""
    factor = eta_min_ratio + (1 - eta_min_ratio) * (1 + math.cos(math.pi * min(epoch, t_max) / t_max)) / 2
    if epoch < warmup_epoch:
        factor *= (epoch + 1) / warmup_epoch
    return factor


@SCHEDULERS.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, T_max: int, eta_min_ratio: float = 0.0,
           warmup_epoch: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """lr0 * (eta + (1 - eta)(1 + cos(pi t / T_max)) / 2) per epoch (CosineAnnealingLR closed form), optional warm-up."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: warmup_cosine_factor(e, T_max, warmup_epoch, eta_min_ratio))


@SCHEDULERS.register("constant")
def constant(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)
