"""Parity with the official losses of NCL, MDCS, BCL and SHIKE, and with SHIKE's network.

Fixture ``fixtures/methods_2022_24.json`` was computed by ``generators/gen_methods_2022_24.py`` from the original
repositories at pinned commits (recorded in the fixture): loss values AND input gradients on fixed logits, so that a
missing or extra ``detach`` would show.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail.model.losses.bcl import balanced_contrastive
from longtail.registry import LOSSES, MODELS

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "methods_2022_24.json").read_text())


def ref(values: list) -> torch.Tensor:
    """A fixture array as float64 (the project's float32 results are compared after .double())."""
    return torch.tensor(values, dtype=torch.float64)


def loss_and_grad(criterion, logits: list, target: list, **extra):
    """Total loss and d loss / d logits of a project loss."""
    z = torch.tensor(logits, requires_grad=True)
    result = criterion(z, torch.tensor(target), **extra)
    result.total.backward()
    return float(result.total.detach()), z.grad


@pytest.mark.parametrize("case", FIXTURE["ncl"]["cases"], ids=lambda c: f"hcm{c['hcm_n']}")
def test_ncl_matches_official_nil_nbod(case):
    criterion = LOSSES.build({"type": "ncl", "args": {"hcm_n": case["hcm_n"], "alpha": case["alpha"],
                                                      "beta": case["beta"]}}, "loss",
                             cls_num_list=case["cls_num_list"], num_experts=3)
    loss, grad = loss_and_grad(criterion, case["logits"], case["target"])
    assert loss == pytest.approx(case["loss"], rel=1e-5)
    assert torch.allclose(grad.double(), ref(case["grad"]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", FIXTURE["mdcs"]["cases"], ids=lambda c: f"epoch{c['epoch']}")
def test_mdcs_matches_official_loss(case):
    """The official loss at epoch t weighs the distillation by min(t / 20, 1); the project's reads the same epoch
    from on_epoch_start. The third case (small logits) has experts with no confident weak-view sample."""
    criterion = LOSSES.build("mdcs", "loss", cls_num_list=case["cls_num_list"], num_experts=3)
    criterion.on_epoch_start(case["epoch"])
    loss, grad = loss_and_grad(criterion, case["logits"], case["target"])
    assert loss == pytest.approx(case["loss"], rel=1e-5)
    assert torch.allclose(grad.double(), ref(case["grad"]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", FIXTURE["bcl"]["cases"], ids=lambda c: f"T{c['temperature']}")
def test_bcl_matches_official_balscl_and_logit_adjust(case):
    features = torch.tensor(case["features"], requires_grad=True)  # (B, 2, P): the official layout
    centers = torch.tensor(case["centers"], requires_grad=True)
    target = torch.tensor(case["target"])
    anchors = torch.cat([features[:, 0], features[:, 1]])  # the project's layout: view by view
    scl = balanced_contrastive(anchors, target.repeat(2), centers, case["temperature"])
    assert float(scl.detach()) == pytest.approx(case["scl"], rel=1e-5)

    # the whole loss through the registered entry: logits of view 0, projections of views 1-2
    criterion = LOSSES.build({"type": "bcl", "args": {"temperature": case["temperature"], "alpha": case["alpha"],
                                                      "beta": case["beta"]}}, "loss",
                             cls_num_list=case["cls_num_list"], num_experts=1)
    logits = torch.tensor(case["logits"], requires_grad=True)
    b, c = logits.shape
    all_logits = torch.cat([logits, torch.zeros(2 * b, c)])[:, None]  # views 1-2 never reach the classifier loss
    projection = torch.cat([torch.zeros_like(features[:, 0]), features[:, 0], features[:, 1]])[:, None]
    result = criterion(all_logits, target.repeat(3), projection=projection, prototypes=centers[None])
    result.total.backward()
    assert float(result.total.detach()) == pytest.approx(case["loss"], rel=1e-5)
    for ours, theirs in ((features.grad, "grad_features"), (centers.grad, "grad_centers"), (logits.grad, "grad_logits")):
        assert torch.allclose(ours.double(), ref(case[theirs]), rtol=1e-4, atol=1e-6), theirs


@pytest.mark.parametrize("case", [c for c in FIXTURE["shike"]["cases"] if not c["balance"]], ids=lambda c: "stage1")
def test_shike_matches_official_mix_outputs(case):
    criterion = LOSSES.build("shike", "loss", cls_num_list=case["cls_num_list"], num_experts=3)
    loss, grad = loss_and_grad(criterion, case["logits"], case["target"])
    assert loss == pytest.approx(case["loss"], rel=1e-5)
    assert torch.allclose(grad.double(), ref(case["grad"]), rtol=1e-4, atol=1e-6)


def test_shike_stage_two_is_balanced_softmax_times_the_expert_count():
    """SHIKE's second stage sums Balanced Softmax over the experts; the project's ``balanced_softmax`` averages, so
    shike_rt.json multiplies the lr by E and divides the weight decay by E (docs/methods.md, SHIKE): the loss and
    its gradient are exactly 1/E of the official ones."""
    case = next(c for c in FIXTURE["shike"]["cases"] if c["balance"])
    criterion = LOSSES.build("balanced_softmax", "loss", cls_num_list=case["cls_num_list"], num_experts=3)
    loss, grad = loss_and_grad(criterion, case["logits"], case["target"])
    assert 3 * loss == pytest.approx(case["loss"], rel=1e-5)
    assert torch.allclose(3 * grad.double(), ref(case["grad"]), rtol=1e-4, atol=1e-6)


def test_shike_network_matches_official_resnet_moe():
    """resnet_cifar_dkf (depth 8, width 16, 3 experts) with the weights the generator mapped onto the official
    ResNet_MoE(BasicBlock, [1, 1, 1]) gives the same logits (training mode: batch statistics in every BN)."""
    case = FIXTURE["shike"]["model"]
    torch.manual_seed(case["seed"])
    model = MODELS.build({"type": "resnet_cifar_dkf", "args": {"depth": 8, "num_experts": 3}}, "arch", num_classes=10,
                         in_channels=3)
    x = torch.randn(*case["input_shape"], generator=torch.Generator().manual_seed(case["input_seed"]))
    model.train()
    with torch.no_grad():
        logits = model(x)["logits"]
    assert torch.allclose(logits.double(), ref(case["logits"]), rtol=1e-4, atol=1e-4)
    assert F.softmax(logits, -1).shape == (4, 3, 10)
