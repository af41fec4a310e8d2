"""Parity with SADE's training loss and its test-time aggregation objective (Vanint/SADE-AgnosticLT).

Fixture ``fixtures/sade.json`` is written by ``tests/parity/generators/gen_sade.py`` in a scratch checkout of
Vanint/SADE-AgnosticLT on CPU (``.cuda`` patched to a no-op; torch version recorded in the fixture):

* ``loss``: ``model/loss.py`` ``DiverseExpertLoss(cls_num_list=CLS, tau=2)`` called as the trainer does,
  ``loss(output_logits, target, extra_info={"logits": logits.transpose(0, 1)})``, on fixed (12, 3, 10) logits and a
  10-class IR-100 profile without ties; ``inverse_prior`` = ``DiverseExpertLoss.inverse_prior(prior)``;
* ``loss_ties``: the same on the CIFAR-100-LT IR-100 profile (tied tail counts) and on a profile of three tied
  blocks, recording the original inverse prior (``torch.sort``, not stable) and a loss value;
* ``test_time``: ``test_training(loader, config, model, aggregation_weight, optimizer, None)`` of
  ``test_training_cifar.py`` and of ``test_training_inat.py`` (entropy bonus 0.01), called for two epochs as their
  ``main`` does, with ``aggregation_weight`` = 1/3 each and ``torch.optim.SGD`` built from the ``optimizer`` section
  of ``configs/test_time_cifar100_ir100_sade.json`` / ``configs/test_time_iNaturalist_resnet50_sade.json``; the
  loader yields three fixed batches of two views whose "images" are the per-expert logits themselves (the model
  returns ``{"logits": x}``). Recorded: the cosine term of every step (via a recording ``AverageMeter``), the
  gradient of ``aggregation_weight`` at every step (via an SGD subclass), and the weights after each epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail.methods.sade import TEST_TIME_DEFAULTS, learn_expert_weights, stability_loss
from longtail.model.losses.base import training_prior
from longtail.model.losses.sade import inverse_prior
from longtail.registry import LOSSES

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "sade.json").read_text())


def build_sade(cls_num_list: list[int], tau: float = 2.0):
    return LOSSES.build({"type": "sade", "args": {"tau": tau}}, "loss", cls_num_list=cls_num_list, num_experts=3)


def test_diverse_expert_loss_value() -> None:
    """Original ``DiverseExpertLoss`` (CE(z1) + CE(z2 + log pi) + CE(z3 + log pi - 2 log pi_inv), summed) vs the
    project's ``sade`` loss with tau 2, on a profile without ties."""
    case = FIXTURE["loss"]
    criterion = build_sade(case["cls_num_list"], case["tau"])
    result = criterion(torch.tensor(case["logits"]), torch.tensor(case["target"]))
    assert float(result.total) == pytest.approx(case["loss"], rel=1e-6, abs=1e-5)
    prior = training_prior(case["cls_num_list"])
    assert inverse_prior(prior).tolist() == pytest.approx(case["inverse_prior"], rel=1e-6)


def test_inverse_prior_ties_documented_difference() -> None:
    """Documented deviation 11 ("Stable inverse prior in SADE", docs/methods.md): with tied counts the original's
    unstable ``torch.sort`` permuted tied classes (in the fixture: CIFAR-100-LT IR 100, classes 87 and 88, both with
    8 images, get the values of the 3rd/4th largest classes, 299 and 286 images, the wrong way round; the three-block
    profile swaps whole blocks), while the project's inverse prior is exactly the reversed prior.

    Checked: the project's inverse prior is ``prior.flip(0)``; the original's is a permutation of it inside every
    group of tied classes; the original loss value is reproduced by the project's loss module once its backward
    expert's adjustment uses the original's inverse prior, so the tie order is the only difference.
    """
    for key in ("cifar100_ir100", "ties"):
        case = FIXTURE["loss_ties"][key]
        counts = case["cls_num_list"]
        prior = training_prior(counts)
        ours = inverse_prior(prior)
        assert torch.equal(ours, prior.flip(0))
        original = torch.tensor(case["inverse_prior"], dtype=torch.float64)
        assert not case["equals_reversed_prior"]
        assert not torch.allclose(original, ours, rtol=1e-5, atol=0)
        for value in set(counts):
            group = [c for c, n in enumerate(counts) if n == value]
            assert sorted(original[group].tolist()) == pytest.approx(sorted(ours[group].tolist()), rel=1e-6)

    case = FIXTURE["loss_ties"]["cifar100_ir100"]
    criterion = build_sade(case["cls_num_list"])
    logits, target = torch.tensor(case["logits"]), torch.tensor(case["target"])
    ours = float(criterion(logits, target).total)
    assert ours != pytest.approx(case["loss"], rel=1e-4)  # two targets are class 88 (swapped with 87)
    log_prior = torch.log(training_prior(case["cls_num_list"]) + 1e-9)
    original_inverse = torch.tensor(case["inverse_prior"], dtype=torch.float64)
    criterion.adjustment[2] = (log_prior - 2.0 * torch.log(original_inverse + 1e-9)).float()
    assert float(criterion(logits, target).total) == pytest.approx(case["loss"], rel=1e-6, abs=1e-4)


def views() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.tensor(v1), torch.tensor(v2)) for v1, v2 in FIXTURE["test_time"]["views"]]


@pytest.mark.parametrize("script,entropy_weight", [("cifar", 0.0), ("inat", 0.01)])
def test_stability_loss_first_step(script: str, entropy_weight: float) -> None:
    """At the first step (weights 1/3 each): the original's cosine term equals ``-stability_loss(..., 0)`` and the
    original's gradient of ``aggregation_weight`` equals the gradient of the project's ``stability_loss`` with the
    script's entropy weight (0 for CIFAR, 0.01 for iNaturalist) with respect to a (w = softmax(a))."""
    run = FIXTURE["test_time"][script]
    v1, v2 = views()[0]
    a = torch.full((3,), 1.0 / 3, requires_grad=True)
    assert float(-stability_loss(v1, v2, F.softmax(a, 0), 0.0).detach()) == pytest.approx(run["ssl_cosine_per_step"][0], abs=1e-6)
    loss = stability_loss(v1, v2, F.softmax(a, 0), entropy_weight)
    loss.backward()
    assert a.grad.tolist() == pytest.approx(run["grad_per_step"][0], rel=1e-4, abs=1e-8)


@pytest.mark.parametrize("script,entropy_weight", [("cifar", 0.0), ("inat", 0.01)])
def test_learned_weights_match_test_training(script: str, entropy_weight: float) -> None:
    """Two epochs of the original ``test_training`` (three batches each, same order) vs the project's
    ``learn_expert_weights`` with the same SGD settings (lr, momentum 0.9, weight decay, Nesterov): the weights
    after two epochs, the rounded weights the original returns, and (CIFAR, no entropy term) the per-epoch mean
    objective = minus the mean cosine."""
    run = FIXTURE["test_time"][script]
    opt = run["optimizer"]
    settings = {**TEST_TIME_DEFAULTS, "lr": opt["lr"], "momentum": opt["momentum"], "weight_decay": opt["weight_decay"],
                "nesterov": opt["nesterov"], "epochs": len(run["epochs"]), "entropy_weight": entropy_weight}
    batches = views()
    result = learn_expert_weights(lambda epoch: iter(batches), 3, settings)
    assert result.epochs_run == len(run["epochs"])
    final = run["epochs"][-1]
    assert result.weights.tolist() == pytest.approx(final["softmax"], rel=1e-5, abs=1e-7)
    assert torch.round(result.weights, decimals=2).tolist() == pytest.approx(final["rounded_weights"], abs=1e-6)
    if entropy_weight == 0:
        cos = run["ssl_cosine_per_step"]
        per_epoch = [-sum(cos[i:i + len(batches)]) / len(batches) for i in range(0, len(cos), len(batches))]
        assert result.losses == pytest.approx(per_epoch, abs=1e-6)


def test_settings_defaults_are_sade_cifar_test_time_config() -> None:
    """``TEST_TIME_DEFAULTS`` = the optimizer section of SADE's ``test_time_cifar100_ir100_sade.json``."""
    opt = FIXTURE["test_time"]["cifar"]["optimizer"]
    assert {k: TEST_TIME_DEFAULTS[k] for k in opt} == opt
