"""RIDE (Wang et al. 2021) losses: diversity-regularised LDAM-DRW experts, ensemble distillation, router BCE.

``ride_distill`` consumes ``teacher_output`` (added to the training step by the ``distill`` config section) and
``ride_router`` consumes ``router_logits`` (added by the ``arch.router`` extension); both live in methods/ride.py.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from longtail.model.losses.base import (ExpertLoss, LossOutput, as_expert_logits, at_least_fp32, effective_number_weights,
                               ldam_margins, subtract_margin, weighted_expert_cross_entropy)
from longtail.registry import LOSSES


def diversity_temperature_weights(cls_num_list: Sequence[int], reweight_factor: float) -> torch.Tensor:
    """RIDE's per-class temperature factors v_c = C * pi_c * r + 1 - r, divided by their maximum (head class -> 1)."""
    counts = torch.as_tensor(list(cls_num_list), dtype=torch.float64)
    weights = len(counts) * counts / counts.sum() * reweight_factor + 1.0 - reweight_factor
    if (weights <= 0).any():
        raise ValueError(f"loss.args.reweight_factor={reweight_factor} makes a diversity temperature <= 0; "
                         "use a value in [0, 1)")
    return (weights / weights.max()).float()


def batch_kl(target_logits: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """KL(softmax(target / T) || softmax(logits / T)) summed over classes, averaged over the batch ('batchmean').

    The target distribution is detached: only ``logits`` receives gradients.
    """
    log_q = F.log_softmax(logits / temperature, dim=-1)
    p = F.softmax(target_logits.detach() / temperature, dim=-1)
    return F.kl_div(log_q, p, reduction="batchmean")


class RIDELoss(ExpertLoss):
    """RIDE loss (docs/methods.md, RIDE), a SUM over experts e of

        base_loss_factor * CE_w(LDAM(z_e), y) + diversity_factor * Tbar^2 * KL(softmax(zbar / T) || softmax(z_e / T))

    with zbar the mean expert logits (detached in the KL), per-class temperature T = T0 * v when re-weighting is on
    (epochs > reweight_epoch and ``reweight``), else T = T0; Tbar = mean_c T_c. ``w`` (class-balanced weights) is
    used in CE_w only while re-weighting is on. A negative ``diversity_factor`` rewards disagreement with the ensemble.

    Reference quirk NOT replicated: with ``diversity_factor == 0`` the reference computes the individual CE on zbar
    instead of z_e (the ensemble trained as a whole, E times); here the CE always uses each expert's own logits.
    """

    def __init__(self, cls_num_list: Sequence[int], max_m: float, s: float, reweight: bool, reweight_epoch: int,
                 reweight_factor: float, base_loss_factor: float, diversity_factor: float, diversity_temperature: float,
                 beta: float) -> None:
        super().__init__()
        self.scale, self.reweight, self.reweight_epoch = s, reweight, reweight_epoch
        self.base_loss_factor, self.diversity_factor = base_loss_factor, diversity_factor
        self.diversity_temperature = diversity_temperature
        self.register_buffer("margins", ldam_margins(cls_num_list, max_m))
        self.register_buffer("class_weights", effective_number_weights(cls_num_list, beta))
        weights = diversity_temperature_weights(cls_num_list, reweight_factor)
        self.register_buffer("temperature_weights", weights)
        self.weighted_temperature_mean = diversity_temperature * float(weights.mean())  # host value: no per-step sync
        self.reweighting = False

    def on_epoch_start(self, epoch: int) -> None:
        """Deferred re-weighting: class weights and per-class temperatures for epochs > reweight_epoch (-1 or
        ``reweight`` false: never, as the BalPoE/SADE copy of the reference loss)."""
        self.reweighting = self.reweight and self.reweight_epoch >= 0 and epoch > self.reweight_epoch

    def temperature(self) -> tuple[torch.Tensor | float, float]:
        """The diversity temperature (per-class vector or scalar T0) and its class mean Tbar."""
        if self.reweighting:
            return self.diversity_temperature * self.temperature_weights, self.weighted_temperature_mean
        return self.diversity_temperature, self.diversity_temperature

    def ride_terms(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-expert RIDE terms (E,); their sum is the loss."""
        z = as_expert_logits(logits)
        shifted = subtract_margin(z, target, self.margins, self.scale)
        ce = weighted_expert_cross_entropy(shifted, target, self.class_weights if self.reweighting else None)
        terms = self.base_loss_factor * ce
        if self.diversity_factor != 0:
            t, t_mean = self.temperature()
            ensemble = z.mean(dim=1)
            kl = torch.stack([batch_kl(ensemble, z[:, e], t) for e in range(z.shape[1])])
            terms = terms + self.diversity_factor * t_mean ** 2 * kl
        return terms

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        per_expert = self.ride_terms(logits, target)
        return LossOutput(per_expert.sum(), per_expert)


class RIDEDistillLoss(RIDELoss):
    """RIDE + ensemble distillation (docs/methods.md, RIDE distillation):

        ride_loss_factor * L_RIDE + distill_loss_factor * T_d^2 * KL(softmax(zbar_T / T_d) || softmax(zbar / T_d))

    zbar_T is the teacher's ensemble output (``teacher_output``, computed by the trainer in eval mode without
    gradients). The reference adds both terms once per expert inside its expert loop, i.e. its objective is
    E * (this loss): ``scale_by_num_experts=True`` multiplies the objective (and the logged per-expert terms) by E
    to train exactly like it (the shipped configs do; with SGD it is an E-times larger step against the same
    weight decay, which is what the reference's learning rate was tuned for).
    """

    extra_inputs = ("teacher_output",)

    def __init__(self, cls_num_list: Sequence[int], distill_temperature: float, ride_loss_factor: float,
                 distill_loss_factor: float, scale_by_num_experts: bool = False, **ride_args: Any) -> None:
        super().__init__(cls_num_list, **ride_args)
        self.distill_temperature = distill_temperature
        self.ride_loss_factor, self.distill_loss_factor = ride_loss_factor, distill_loss_factor
        self.scale_by_num_experts = scale_by_num_experts

    def forward(self, logits: torch.Tensor, target: torch.Tensor,  # type: ignore[override]
                teacher_output: torch.Tensor) -> LossOutput:
        z = as_expert_logits(logits)
        if teacher_output.shape != (z.shape[0], z.shape[2]):
            raise ValueError(f"teacher_output must be (batch, classes) = {(z.shape[0], z.shape[2])}, got "
                             f"{tuple(teacher_output.shape)}: the distill.checkpoint model has a different class count")
        per_expert = self.ride_loss_factor * self.ride_terms(z, target)
        t_d = self.distill_temperature
        distill = t_d ** 2 * batch_kl(teacher_output.to(z.dtype), z.mean(dim=1), t_d)
        scale = z.shape[1] if self.scale_by_num_experts else 1
        return LossOutput(scale * (per_expert.sum() + self.distill_loss_factor * distill), scale * per_expert)


def router_targets(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targets (B, E-1) of RIDE's router (docs/methods.md, RIDE router): t_k = prefix 0..k wrong AND some longer prefix right.

    ``correct_j`` is whether the mean logits of experts 0..j predict ``target``; decision k (taken after expert k)
    should call expert k+1 iff correct_k is false and any of correct_{k+1..E-1} is true.
    """
    prefix_sum = as_expert_logits(logits).detach().cumsum(dim=1)  # argmax of a prefix sum = argmax of its mean
    correct = prefix_sum.argmax(dim=-1) == target[:, None]  # (B, E)
    later = correct.flip(1).int().cummax(dim=1).values.flip(1).bool()  # later[:, j] = any(correct[:, j:])
    return (~correct[:, :-1] & later[:, 1:]).float()


class RouterLoss(ExpertLoss):
    """Mean over the E-1 router decisions of BCEWithLogits(u_k, t_k; pos_weight) (docs/methods.md, RIDE router)."""

    extra_inputs = ("router_logits",)

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight)))

    def forward(self, logits: torch.Tensor, target: torch.Tensor,  # type: ignore[override]
                router_logits: torch.Tensor) -> LossOutput:
        router_logits = at_least_fp32(router_logits)
        targets = router_targets(logits, target).to(router_logits.dtype)
        if router_logits.shape != targets.shape:
            raise ValueError(f"router_logits must be (batch, experts - 1) = {tuple(targets.shape)}, "
                             f"got {tuple(router_logits.shape)}")
        total = F.binary_cross_entropy_with_logits(router_logits, targets, pos_weight=self.pos_weight)
        return LossOutput(total, None)


@LOSSES.register("ride")
def ride_loss(cls_num_list: list[int], max_m: float = 0.5, s: float = 30.0, reweight: bool = True,
              reweight_epoch: int = -1, reweight_factor: float = 0.05, base_loss_factor: float = 1.0,
              diversity_factor: float = -0.2, diversity_temperature: float = 1.0, beta: float = 0.9999) -> RIDELoss:
    """RIDE: LDAM-DRW per expert + diversity KL to the ensemble (diversity_factor: additional_diversity_factor)."""
    return RIDELoss(cls_num_list, max_m, s, reweight, reweight_epoch, reweight_factor, base_loss_factor,
                    diversity_factor, diversity_temperature, beta)


@LOSSES.register("ride_distill")
def ride_distill_loss(cls_num_list: list[int], distill_temperature: float = 1.0, ride_loss_factor: float = 1.0,
                      distill_loss_factor: float = 1.0, max_m: float = 0.5, s: float = 30.0, reweight: bool = True,
                      reweight_epoch: int = -1, reweight_factor: float = 0.05, base_loss_factor: float = 1.0,
                      diversity_factor: float = -0.2, diversity_temperature: float = 1.0, beta: float = 0.9999,
                      scale_by_num_experts: bool = False) -> RIDEDistillLoss:
    """RIDE + distillation from the teacher of the ``distill`` section; ``scale_by_num_experts``: x E as the reference."""
    return RIDEDistillLoss(cls_num_list, distill_temperature, ride_loss_factor, distill_loss_factor,
                           scale_by_num_experts, max_m=max_m, s=s,
                           reweight=reweight, reweight_epoch=reweight_epoch, reweight_factor=reweight_factor,
                           base_loss_factor=base_loss_factor, diversity_factor=diversity_factor,
                           diversity_temperature=diversity_temperature, beta=beta)


@LOSSES.register("ride_router")
def ride_router_loss(pos_weight: float = 20.0) -> RouterLoss:
    """Router BCE with positive weight ``pos_weight`` (reference constructor default 20, configs 100)."""
    return RouterLoss(pos_weight)
