"""Parity with BalPoE's expert loss and its mixup combiner (emasa/BalPoE-CalibratedLT).

Fixture ``fixtures/balpoe.json`` is written by ``tests/parity/generators/gen_balpoe.py`` (pinned commit and how to
rerun it: ``tests/parity/generators/README.md``) in a scratch checkout of emasa/BalPoE-CalibratedLT:

* ``loss`` / ``per_expert``: ``model/loss.py`` ``BSExpertLoss(cls_num_list=CLS, tau_list=[0, 1.0, 2.0])`` (the loss
  and taus of ``configs/mixup/standard_training/config_cifar100_ir100_bs-experts.json``) called as the trainer
  does, ``loss(output_logits, target, extra_info={"logits": logits.transpose(0, 1)}, return_expert_losses=True)``,
  on fixed (12, 3, 10) logits in [-30, 30] (cosine-head scale) and a 10-class IR-100 profile;
* ``mixup``: ``utils/combiner.py`` ``Combiner(cfg).forward(model, BSExpertLoss, images, target)`` with mode
  ``mixup`` (alpha 0.4), ``add_extra_info`` and ``return_expert_losses`` true, where ``model`` is a fixed linear map
  from the (12, 2, 4, 4) images to (B, E, C) expert logits; ``np.random.beta`` and ``torch.randperm`` were wrapped
  to record the drawn lambda and permutation (seeds 3 / 4).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.registry import LOSSES
from longtail.core.combiner import MixCombiner
from longtail.registry import COMBINERS
from longtail.model.losses.logit_adjusted import expand_tau_list

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "balpoe.json").read_text())


def build_balpoe(tau_list: list[float]):
    return LOSSES.build({"type": "balpoe", "args": {"tau_list": tau_list}, "tau_min": 0, "tau_max": 2}, "loss",
                        siblings=("tau_min", "tau_max"), cls_num_list=FIXTURE["cls_num_list"], num_experts=len(tau_list))


def test_tau_list_of_the_reference_config() -> None:
    """BalPoE's configs write tau_list [0, 1, 2] with tau_min 0 / tau_max 2: the project's 'limits' gives the same."""
    assert expand_tau_list("limits", 3, 0.0, 2.0) == pytest.approx(FIXTURE["tau_list"])


def test_bsexpertloss_value_and_expert_terms() -> None:
    """Original ``BSExpertLoss`` total (mean over experts of CE(z_e + tau_e log(pi + 1e-9), y)) and its per-expert
    ``loss_e_{i}`` vs ``LOSSES.build({"type": "balpoe", "args": {"tau_list": [0, 1, 2]}})``."""
    criterion = build_balpoe(FIXTURE["tau_list"])
    logits = torch.tensor(FIXTURE["logits"], dtype=torch.float32)
    result = criterion(logits, torch.tensor(FIXTURE["target"]))
    assert float(result.total) == pytest.approx(FIXTURE["loss"], rel=1e-6, abs=1e-5)
    assert result.per_expert.tolist() == pytest.approx(FIXTURE["per_expert"], rel=1e-6, abs=1e-5)


class LinearExperts(torch.nn.Module):
    """The fixture's fixed linear 'model': image -> (B, E, C) expert logits, output = their mean."""

    def __init__(self, weight: torch.Tensor, num_experts: int, num_classes: int) -> None:
        super().__init__()
        self.weight, self.e, self.c = weight, num_experts, num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = (x.flatten(1) @ self.weight.T).view(-1, self.e, self.c)
        return {"output": z.mean(1), "logits": z}


class FixedLambda:
    """Stands in for the host generator: Beta draws return the fixture's lambda."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    def beta(self, a: float, b: float) -> float:
        return self.lam

    def random(self) -> float:
        return 0.0


def test_mixup_combiner_matches_original_combiner(monkeypatch: pytest.MonkeyPatch) -> None:
    """Original ``Combiner.mixup`` (lambda = 0.348, recorded permutation) vs the project's ``mixup`` combiner with the
    same lambda and permutation: loss, per-expert terms and mixed training accuracy."""
    mix = FIXTURE["mixup"]
    target = torch.tensor(FIXTURE["target"])
    images = torch.tensor(mix["images"], dtype=torch.float32)
    e, c = len(FIXTURE["tau_list"]), len(FIXTURE["cls_num_list"])
    model = LinearExperts(torch.tensor(mix["weight"], dtype=torch.float32), e, c)
    perm = torch.tensor(mix["perm"])
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None, device=None: perm.clone())
    combiner = COMBINERS.build({"type": "mixup", "args": {"alpha": 0.4}}, "combiner")
    assert isinstance(combiner, MixCombiner)
    step = combiner(model, images, target, build_balpoe(FIXTURE["tau_list"]), torch.Generator(), FixedLambda(mix["lam"]))
    assert float(step.loss) == pytest.approx(mix["loss"], rel=1e-5, abs=1e-5)
    assert step.per_expert.tolist() == pytest.approx(mix["per_expert"], rel=1e-5, abs=1e-5)
    assert float(step.correct) / len(target) == pytest.approx(mix["accuracy"], rel=1e-6)


def test_mixup_is_lambda_combination_of_losses() -> None:
    """The same number by hand with the project's loss: lam * L(x_mix, y) + (1 - lam) * L(x_mix, y[perm])."""
    mix = FIXTURE["mixup"]
    lam, perm = mix["lam"], torch.tensor(mix["perm"])
    target = torch.tensor(FIXTURE["target"])
    images = torch.tensor(mix["images"], dtype=torch.float32)
    e, c = len(FIXTURE["tau_list"]), len(FIXTURE["cls_num_list"])
    logits = LinearExperts(torch.tensor(mix["weight"], dtype=torch.float32), e, c)(lam * images + (1 - lam) * images[perm])["logits"]
    criterion = build_balpoe(FIXTURE["tau_list"])
    total = lam * criterion(logits, target).total + (1 - lam) * criterion(logits, target[perm]).total
    assert float(total) == pytest.approx(mix["loss"], rel=1e-5, abs=1e-5)
    assert np.isclose(mix["lam"], 0.3479160139746632)
