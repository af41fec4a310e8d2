"""LADE loss (Hong et al. 2021) against a hand computation on a 3-sample, 2-class batch, and its shipped configs."""
import math
from pathlib import Path

import pytest
import torch

from longtail.registry import LOSSES
from longtail.core.build import build_without_data, resolve
from longtail.utils.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COUNTS = [30, 10]  # training prior pi = (0.75, 0.25)


def lade_by_hand(z: list[list[float]], y: list[int], alpha: float, lam: float) -> float:
    """PC-softmax CE + alpha * LADER for one model, written out with scalars."""
    pi = [c / sum(COUNTS) for c in COUNTS]
    b, c = len(z), len(pi)
    ce = 0.0
    for row, label in zip(z, y):
        adjusted = [v + math.log(p + 1e-9) for v, p in zip(row, pi)]
        ce += -adjusted[label] + math.log(sum(math.exp(v) for v in adjusted))
    ce /= b
    regularizer = 0.0
    for k in range(c):
        members = [row[k] for row, label in zip(z, y) if label == k]
        first = sum(members) / (len(members) + 1e-8)
        second = math.log(sum(math.exp(row[k] - math.log(pi[k] + 1e-9) + math.log(1 / c)) for row in z) / b)
        regularizer -= pi[k] * (first - second - lam * second ** 2)
    return ce + alpha * regularizer


def test_lade_loss_matches_hand_computation():
    z = [[2.0, -1.0], [0.5, 0.3], [-0.2, 1.4]]
    y = [0, 0, 1]
    loss = LOSSES.build({"type": "lade", "args": {"alpha": 0.1, "remine_lambda": 0.01}}, "loss", cls_num_list=COUNTS)
    out = loss(torch.tensor(z).unsqueeze(1), torch.tensor(y))
    assert out.total.item() == pytest.approx(lade_by_hand(z, y, 0.1, 0.01), rel=1e-5)
    # two experts: the mean of the two per-expert losses
    z2 = [[0.0, 1.0], [1.0, -1.0], [0.3, 0.3]]
    both = loss(torch.tensor([z, z2]).permute(1, 0, 2), torch.tensor(y))
    expected = [lade_by_hand(z, y, 0.1, 0.01), lade_by_hand(z2, y, 0.1, 0.01)]
    assert both.per_expert.tolist() == pytest.approx(expected, rel=1e-5)
    assert both.total.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_lade_regulariser_ignores_classes_absent_from_the_batch():
    """first_c is 0 for a class without samples; only its log-mean-exp term remains."""
    z, y = [[1.0, 0.0], [0.0, 2.0]], [0, 0]
    alpha_only = LOSSES.build({"type": "lade", "args": {"alpha": 1.0, "remine_lambda": 0.0}}, "loss", cls_num_list=COUNTS)
    no_reg = LOSSES.build({"type": "lade", "args": {"alpha": 0.0}}, "loss", cls_num_list=COUNTS)
    reg = alpha_only(torch.tensor(z).unsqueeze(1), torch.tensor(y)).total - no_reg(torch.tensor(z).unsqueeze(1), torch.tensor(y)).total
    assert reg.item() == pytest.approx(lade_by_hand(z, y, 1.0, 0.0) - lade_by_hand(z, y, 0.0, 0.0), rel=1e-5)


@pytest.mark.parametrize("config", ["fmnist_ir100/lade.json", "cifar100_ir100/lade.json"])
def test_lade_configs_use_the_lade_loss_with_cifar_settings(config):
    built = build_without_data(resolve(load_config(ROOT / "configs" / config)))
    loss = built["criterion"]
    assert type(loss).__name__ == "LADELoss" and loss.alpha == 0.1 and loss.remine_lambda == 0.01
