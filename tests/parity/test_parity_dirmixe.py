"""Parity with the official DirMixE code (scongl/DirMixE): its training loss and its shifted test-set draws.

Fixture ``fixtures/dirmixe.json`` was written by ``tests/parity/generators/gen_dirmixe.py`` (run outside the project
on a checkout of scongl/DirMixE, CPU; its docstring says exactly what was called).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.data_loader.profiles import lt_class_counts, perturbed_dirichlet_counts, select_with
from longtail.data_loader.shift_protocols import PriorPool, dirichlet_protocol
from longtail.methods.dirmixe import dirichlet_centres
from longtail.model.losses.base import training_prior
from longtail.registry import LOSSES

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "dirmixe.json").read_text())


def build_loss(case: dict, regularise: bool):
    """The project's loss with the fixture's pool installed in the fixture's order."""
    criterion = LOSSES.build({"type": "dirmixe", "args": {"trials": case["trials"], "pool_batches": 1,
                                                         "power": case["power"], "lambda_var": case["lambda_var"]}},
                             "loss", cls_num_list=case["cls_num_list"], num_experts=3)
    criterion.set_pool(torch.tensor(case["experts"]), torch.tensor(case["draws"], dtype=torch.float64),
                       training_prior(case["cls_num_list"]), case["power"])
    criterion.regularise = regularise
    return criterion


@pytest.mark.parametrize("index", [0, 1])
@pytest.mark.parametrize("regularise", [False, True])
def test_loss_matches_official(index: int, regularise: bool) -> None:
    """LogitAdjustExpertLoss.forward (mean over draws, plus lambda_var * semi-variance when its flag is False)
    equals the project's loss on the same draws, logits and targets."""
    case = FIXTURE["loss"][index]
    criterion = build_loss(case, regularise)
    out = criterion(torch.tensor(case["logits"]), torch.tensor(case["target"]))
    expected = case["regularised" if regularise else "mean_only"]
    assert float(out.total) == pytest.approx(expected, rel=2e-5)


def test_centres_match_official() -> None:
    """weights1..3 of generate_weights() (training prior, uniform, inverse prior) for a profile without ties."""
    case = FIXTURE["loss"][0]
    assert dirichlet_centres(case["cls_num_list"]).flatten().tolist() == pytest.approx(np.ravel(case["centres"]).tolist(), rel=1e-6)


def test_imagenet_centres_with_ties_differ_only_inside_tie_groups() -> None:
    """The official ImageNet variant sorts the counts with NumPy's unstable argsort, so tied classes may swap
    values; the project's inverse prior is the stable one (as for SADE). Same multiset inside every tie group."""
    case = FIXTURE["imagenet_centres"]
    ours = dirichlet_centres(case["cls_num_list"])[2].numpy()
    theirs = np.asarray(case["centres"][2])
    counts = np.asarray(case["cls_num_list"])
    for value in np.unique(counts):
        group = counts == value
        assert sorted(ours[group]) == pytest.approx(sorted(theirs[group]), rel=1e-6)


@pytest.mark.parametrize("epochs", ["50", "200"])
def test_regulariser_schedule_matches_official(epochs: str) -> None:
    """The regulariser is on in the same 1-based epochs as the official start_new_epoch(epoch, epochs + 1)."""
    from longtail.methods.dirmixe import resolve_dirmixe_block

    block = resolve_dirmixe_block({"type": "dirmixe", "args": {"pool_batches": 1}},
                                  {"trainer": {"epochs": int(epochs)}, "seed": 0})
    criterion = LOSSES.build(block, "loss", cls_num_list=[10, 5, 1], num_experts=3)
    on = []
    for epoch in range(1, int(epochs) + 1):
        criterion.on_epoch_start(epoch)
        if criterion.regularise:
            on.append(epoch)
    assert on == FIXTURE["schedule"][epochs]


@pytest.mark.parametrize("case", range(len(FIXTURE["test_sets"]["cases"])))
def test_shifted_test_set_draw_matches_official(case: int) -> None:
    """get_img_num_per_cls + gen_imbalanced_data after np.random.seed(s) == perturbed_dirichlet_counts + select_with
    from RandomState(s): the same counts and the same images."""
    spec = FIXTURE["test_sets"]["cases"][case]
    targets = np.asarray(FIXTURE["test_sets"][spec["targets"]])
    n_test = len(targets) // spec["num_classes"]
    rng = np.random.RandomState(spec["seed"])
    profile = lt_class_counts(n_test, spec["num_classes"], spec["factor"], "exp", spec["reverse"])
    counts = perturbed_dirichlet_counts(rng, n_test, profile)
    assert counts == spec["counts"]
    assert sorted(select_with(targets, counts, rng).tolist()) == sorted(spec["indices"])


def test_protocol_uses_the_official_draw() -> None:
    """The 'dirichlet' protocol's test sets have the counts of the official draw from their own RandomState
    (a protocol draw is the official draw with a derived seed)."""
    spec = FIXTURE["test_sets"]["cases"][0]
    targets = np.asarray(FIXTURE["test_sets"][spec["targets"]])
    counts = lt_class_counts(5000, 10, 0.01)
    pool = PriorPool(targets, counts, seed=3)
    sets = dirichlet_protocol(pool, centres=["forward100"], trials=2)
    from longtail.data_loader.shift_protocols import protocol_rng

    for t, shifted in enumerate(sets):
        rng = protocol_rng(pool, "dirichlet", 0, t)
        expected = perturbed_dirichlet_counts(rng, 100, lt_class_counts(100, 10, 0.01))
        assert np.bincount(targets[shifted.indices], minlength=10).tolist() == expected
