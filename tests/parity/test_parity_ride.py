"""Parity with RIDE's losses (frank-xwang/RIDE-LongTailRecognition ``model/loss.py``).

Fixture ``fixtures/ride.json`` is written by ``tests/parity/generators/gen_ride.py`` in scratch checkouts on CPU
(``.cuda`` patched to a no-op): fixed (12, 3, 10) expert logits in [-30, 30], a (12, 10) teacher output and a
10-class IR-100 profile; every loss was built with ``cls_num_list`` and the arguments of the RIDE repo's
``configs/config_imbalance_cifar100_ride.json`` (max_m 0.5, s 30, reweight true, reweight_epoch 160,
reweight_factor 0.05, additional_diversity_factor -0.45, base_diversity_temperature 1; ``ride_args``), then
``loss._hook_before_epoch(epoch)`` for epoch 160 (before re-weighting) and 161 (after), and called as RIDE's trainer
does: ``RIDELoss(output_logits=mean logits, target, extra_info={"logits": logits.transpose(0, 1)})`` and
``RIDELossWithDistill(student=mean logits, target, teacher=teacher output, extra_info=...)``.
Variants: ``ride_distill`` (distill_temperature 1.5, additional_distill_loss_factor 1, ride_loss_factor 1),
``ride_distill_factors`` (0.7 / 0.5), ``ride_diversity0`` (additional_diversity_factor 0), ``ride_T2_imagenet``
(temperature 2, diversity -0.2, reweight_factor 0.02), ``ride_no_reweight`` (reweight false) and
``ride_reweight_epoch-1``; the last two were also run with the copy of ``RIDELoss`` in emasa/BalPoE-CalibratedLT
``model/loss.py`` (whose epoch hook sets the weights to None instead of leaving them undefined). A string value is
the exception the original raised.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longtail.registry import LOSSES

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "ride.json").read_text())
RIDE = FIXTURE["frank-xwang/RIDE-LongTailRecognition model/loss.py"]
BALPOE_COPY = FIXTURE["emasa/BalPoE-CalibratedLT model/loss.py"]
LOGITS = torch.tensor(FIXTURE["logits"])
TEACHER = torch.tensor(FIXTURE["teacher_output"])
TARGET = torch.tensor(FIXTURE["target"])


def project_args(**changes) -> dict:
    """The fixture's reference arguments under this project's names (docs/methods.md, RIDE)."""
    ref = {**FIXTURE["ride_args"], **changes}
    return {"max_m": ref["max_m"], "s": float(ref["s"]), "reweight": ref["reweight"], "reweight_epoch": ref["reweight_epoch"],
            "reweight_factor": ref["reweight_factor"], "base_loss_factor": ref["base_loss_factor"],
            "diversity_factor": ref["additional_diversity_factor"],
            "diversity_temperature": ref["base_diversity_temperature"]}


def ride_value(epoch: int, logits: torch.Tensor = LOGITS, **changes) -> float:
    loss = LOSSES.build({"type": "ride", "args": project_args(**changes)}, "loss", cls_num_list=FIXTURE["cls_num_list"])
    loss.on_epoch_start(epoch)
    return float(loss(logits, TARGET).total)


def distill_value(epoch: int, scale: bool | None, distill_factor: float = 1.0, ride_factor: float = 1.0) -> float:
    args = {**project_args(), "distill_temperature": 1.5, "distill_loss_factor": distill_factor,
            "ride_loss_factor": ride_factor}
    if scale is not None:
        args["scale_by_num_experts"] = scale
    loss = LOSSES.build({"type": "ride_distill", "args": args}, "loss", cls_num_list=FIXTURE["cls_num_list"])
    loss.on_epoch_start(epoch)
    return float(loss(LOGITS, TARGET, teacher_output=TEACHER).total)


@pytest.mark.parametrize("epoch", [160, 161])
def test_ride_loss(epoch: int) -> None:
    """Original ``RIDELoss`` (LDAM CE + diversity KL, summed over experts) before (epoch 160: no class weights,
    temperature 1) and after (161: effective-number weights, per-class temperature) ``reweight_epoch`` 160."""
    assert ride_value(epoch) == pytest.approx(RIDE[f"ride/epoch{epoch}"], rel=1e-6, abs=1e-5)
    assert BALPOE_COPY[f"ride/epoch{epoch}"] == RIDE[f"ride/epoch{epoch}"]


@pytest.mark.parametrize("epoch", [160, 161])
def test_ride_loss_other_temperature(epoch: int) -> None:
    """Original ``RIDELoss`` with base_diversity_temperature 2, diversity -0.2, reweight_factor 0.02."""
    value = ride_value(epoch, base_diversity_temperature=2.0, additional_diversity_factor=-0.2,
                       reweight_factor=0.02)
    assert value == pytest.approx(RIDE[f"ride_T2_imagenet/epoch{epoch}"], rel=1e-6, abs=1e-5)


@pytest.mark.parametrize("epoch", [160, 161])
def test_ride_distill_scaled_equals_original(epoch: int) -> None:
    """Original ``RIDELossWithDistill`` adds (RIDE loss + T_d^2 KL) once per expert, i.e. E times: the project's
    ``ride_distill`` with ``loss.args.scale_by_num_experts: true`` (shipped configs) gives the same value, also with
    non-unit factors (ride_loss_factor 0.5, additional_distill_loss_factor 0.7)."""
    assert distill_value(epoch, True) == pytest.approx(RIDE[f"ride_distill/epoch{epoch}"], rel=1e-6, abs=1e-4)
    assert distill_value(epoch, True, 0.7, 0.5) == pytest.approx(RIDE[f"ride_distill_factors/epoch{epoch}"], rel=1e-6, abs=1e-4)


@pytest.mark.parametrize("epoch", [160, 161])
def test_ride_distill_unscaled_is_original_over_e(epoch: int) -> None:
    """Documented deviation 17 ("RIDE distillation objective", docs/methods.md): without
    ``scale_by_num_experts`` (default false) the bracket is used once, i.e. original / E (E = 3)."""
    num_experts = LOGITS.shape[1]
    assert distill_value(epoch, None) == pytest.approx(RIDE[f"ride_distill/epoch{epoch}"] / num_experts, rel=1e-6, abs=1e-4)
    assert distill_value(epoch, False) == pytest.approx(RIDE[f"ride_distill/epoch{epoch}"] / num_experts, rel=1e-6, abs=1e-4)


@pytest.mark.parametrize("epoch", [160, 161])
def test_diversity_factor_zero_documented_difference(epoch: int) -> None:
    """Documented deviation 8 ("RIDE with diversity_factor 0", docs/methods.md): with
    additional_diversity_factor 0 the original computes every expert's LDAM CE on the ENSEMBLE logits, so its
    value equals the project's loss evaluated on logits where every expert is replaced by the mean; the project keeps each expert's own logits, which gives a different value."""
    original = RIDE[f"ride_diversity0/epoch{epoch}"]
    ensemble_everywhere = LOGITS.mean(1, keepdim=True).expand_as(LOGITS).contiguous()
    assert ride_value(epoch, ensemble_everywhere, additional_diversity_factor=0.0) == pytest.approx(original, rel=1e-6, abs=1e-5)
    assert ride_value(epoch, additional_diversity_factor=0.0) != pytest.approx(original, rel=1e-3)


def test_reweight_epoch_minus_one_documented_difference() -> None:
    """Documented deviation 9 ("RIDE / LDAM with reweight_epoch: -1 means never re-weight instead of crashing"):
    the RIDE repo's loss raises AttributeError at the first forward; BalPoE's copy (weights set to None) never
    re-weights, which is what the project does."""
    for epoch in (160, 161):
        assert RIDE[f"ride_reweight_epoch-1/epoch{epoch}"].startswith("AttributeError")
        expected = BALPOE_COPY[f"ride_reweight_epoch-1/epoch{epoch}"]
        assert expected == RIDE["ride/epoch160"]
        assert ride_value(epoch, reweight_epoch=-1) == pytest.approx(expected, rel=1e-6, abs=1e-5)


def test_reweight_false_before_reweight_epoch() -> None:
    """reweight false, epoch <= reweight_epoch: no weights anywhere, project = BalPoE's copy of the original."""
    assert ride_value(160, reweight=False) == pytest.approx(BALPOE_COPY["ride_no_reweight/epoch160"], rel=1e-6, abs=1e-5)


def test_reweight_false_after_reweight_epoch() -> None:
    """reweight false, epoch > reweight_epoch: no class weights and no per-class temperature, as the BalPoE/SADE copy
    of the reference loss (the RIDE repo itself raises AttributeError)."""
    assert RIDE["ride_no_reweight/epoch161"].startswith("AttributeError")
    assert BALPOE_COPY["ride_no_reweight/epoch161"] == BALPOE_COPY["ride/epoch160"]
    assert ride_value(161, reweight=False) == pytest.approx(BALPOE_COPY["ride_no_reweight/epoch161"], rel=1e-6, abs=1e-5)
