"""Generate tests/parity/fixtures/ride.json: RIDE's losses (frank-xwang/RIDE-LongTailRecognition ``model/loss.py``).

Run outside the project on checkouts of the pinned commits, CPU (``.cuda`` patched to a no-op): every loss is built
with ``cls_num_list`` and the arguments of the RIDE repo's ``configs/config_imbalance_cifar100_ride.json`` (its
``loss.args`` over ``RIDELoss``'s defaults: max_m 0.5, s 30, reweight true, reweight_epoch 160, reweight_factor 0.05,
additional_diversity_factor -0.45, base_diversity_temperature 1; recorded as ``ride_args``), then
``loss._hook_before_epoch(epoch)`` for epoch 160 (before re-weighting) and 161 (after), and called as RIDE's trainer
does: ``RIDELoss(output_logits=mean logits, target, extra_info={"logits": logits.transpose(0, 1)})`` and
``RIDELossWithDistill(student=mean logits, target, teacher=teacher output, extra_info=...)``.
Variants: ``ride_distill`` (distill_temperature 1.5, additional_distill_loss_factor 1, ride_loss_factor 1),
``ride_distill_factors`` (0.7 / 0.5), ``ride_diversity0`` (additional_diversity_factor 0), ``ride_T2_imagenet``
(temperature 2, diversity -0.2, reweight_factor 0.02), ``ride_no_reweight`` (reweight false) and
``ride_reweight_epoch-1``; the plain loss and the last two also with the copy of ``RIDELoss`` in
emasa/BalPoE-CalibratedLT ``model/loss.py``. A string value is the exception the original raised.

Inputs (``torch.Generator().manual_seed(7)``, in this order): expert logits ``(rand(12, 3, 10) * 2 - 1) * 30``,
teacher output ``(rand(12, 10) * 2 - 1) * 30``, target ``randint(0, 10, (12,))``; a 10-class IR-100 profile.

    python tests/parity/generators/gen_ride.py [--repo-path OWNER/NAME=PATH ... | --mirrors DIR] [--out FILE]
"""
from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: E402

RIDE = "frank-xwang/RIDE-LongTailRecognition"
BALPOE = "emasa/BalPoE-CalibratedLT"
PINNED = {RIDE: "ab8be5c21124612493aff87c7cf235d950bda178", BALPOE: "ca607aed79e2444684f492035e9c0e7f823084d8"}
FIXTURE = "ride.json"
CONFIG = "configs/config_imbalance_cifar100_ride.json"
CLS = [500, 300, 180, 108, 64, 38, 23, 14, 8, 5]
ARG_ORDER = ("max_m", "s", "reweight", "reweight_epoch", "reweight_factor", "base_loss_factor",
             "additional_diversity_factor", "base_diversity_temperature")
DISTILL = {"distill_temperature": 1.5, "additional_distill_loss_factor": 1.0, "ride_loss_factor": 1.0}
VARIANTS = {  # name -> (loss class, argument changes)
    "ride": ("RIDELoss", {}),
    "ride_distill": ("RIDELossWithDistill", DISTILL),
    "ride_distill_factors": ("RIDELossWithDistill", {**DISTILL, "additional_distill_loss_factor": 0.7,
                                                     "ride_loss_factor": 0.5}),
    "ride_diversity0": ("RIDELoss", {"additional_diversity_factor": 0.0}),
    "ride_no_reweight": ("RIDELoss", {"reweight": False}),
    "ride_reweight_epoch-1": ("RIDELoss", {"reweight_epoch": -1}),
    "ride_T2_imagenet": ("RIDELoss", {"base_diversity_temperature": 2.0, "additional_diversity_factor": -0.2,
                                      "reweight_factor": 0.02}),
}
BALPOE_VARIANTS = ("ride", "ride_no_reweight", "ride_reweight_epoch-1")
EPOCHS = (160, 161)


def inputs() -> dict[str, torch.Tensor]:
    """The fixed inputs (one seeded generator, drawn in a fixed order)."""
    g = torch.Generator().manual_seed(7)
    logits = (torch.rand(12, 3, 10, generator=g) * 2 - 1) * 30
    teacher = (torch.rand(12, 10, generator=g) * 2 - 1) * 30
    target = torch.randint(0, 10, (12,), generator=g)
    return {"logits": logits, "teacher": teacher, "target": target}


def reference_args(loss_module: types.ModuleType, root: Path) -> dict:
    """RIDELoss's defaults overridden by the reference config's loss.args, in the fixture's order."""
    defaults = {k: p.default for k, p in inspect.signature(loss_module.RIDELoss.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    merged = {**defaults, **_checkout.config_of(root, CONFIG)["loss"]["args"]}
    return {key: merged[key] for key in ARG_ORDER}


def run(loss_module: types.ModuleType, variant: str, ride_args: dict, epoch: int, x: dict) -> float | str:
    """One original loss value, or the exception it raised as 'Type: message'."""
    class_name, changes = VARIANTS[variant]
    try:
        loss = getattr(loss_module, class_name)(cls_num_list=CLS, **{**ride_args, **changes})
        loss._hook_before_epoch(epoch)
        extra_info = {"logits": x["logits"].transpose(0, 1)}
        mean = x["logits"].mean(1)
        if class_name == "RIDELossWithDistill":
            value = loss(student=mean, target=x["target"], teacher=x["teacher"], extra_info=extra_info)
        else:
            value = loss(output_logits=mean, target=x["target"], extra_info=extra_info)
        return float(value)
    except Exception as error:  # the fixture records what the original raised
        return f"{type(error).__name__}: {error}"


def generate(roots: dict[str, Path]) -> dict:
    """Every variant of both originals at both epochs."""
    ride_loss = _checkout.import_original(roots[RIDE], "model.loss")
    balpoe_loss = _checkout.import_original(roots[BALPOE], "model.loss")
    ride_args = reference_args(ride_loss, roots[RIDE])
    x = inputs()
    return {
        "cls_num_list": CLS,
        "logits": x["logits"].tolist(),
        "teacher_output": x["teacher"].tolist(),
        "target": x["target"].tolist(),
        "ride_args": ride_args,
        "ride_args_note": f"{CONFIG} of the RIDE repo (reweight_epoch {ride_args['reweight_epoch']}, factor "
                          f"{ride_args['reweight_factor']}, diversity {ride_args['additional_diversity_factor']})",
        f"{RIDE} model/loss.py": {f"{variant}/epoch{epoch}": run(ride_loss, variant, ride_args, epoch, x)
                                  for epoch in EPOCHS for variant in VARIANTS},
        f"{BALPOE} model/loss.py": {f"{variant}/epoch{epoch}": run(balpoe_loss, variant, ride_args, epoch, x)
                                    for epoch in EPOCHS for variant in BALPOE_VARIANTS},
    }


def main(argv: list[str] | None = None) -> None:
    args = _checkout.parser(__doc__, FIXTURE, PINNED).parse_args(argv)
    roots = _checkout.checkouts(args, PINNED)
    _checkout.cpu_patches()
    torch.set_num_threads(1)
    _checkout.write_fixture(generate(roots), args.out)


if __name__ == "__main__":
    main()
