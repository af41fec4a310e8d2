"""Losses against hand computations on small tensors."""
import math

import pytest
import torch

from longtail.registry import LOSSES
from longtail.core.combiner import MixCombiner
import numpy as np


def hand_ce(logits_row, label):
    """-z_y + log sum_j exp(z_j), in plain Python."""
    return -logits_row[label] + math.log(sum(math.exp(v) for v in logits_row))


COUNTS = [60, 30, 10]
LOGITS = torch.tensor([[[1.0, 2.0, 0.5], [0.2, -1.0, 0.3], [2.0, 0.0, -0.5]],
                       [[0.1, 0.1, 3.0], [1.5, 0.5, 0.0], [-1.0, 2.0, 1.0]]])  # (B=2, E=3, C=3)
TARGET = torch.tensor([0, 2])


def hand_la(e, tau):
    """Batch mean of CE(z_e + tau * log(pi), y) computed by hand."""
    prior = [c / sum(COUNTS) for c in COUNTS]
    total = 0.0
    for b in range(2):
        row = [LOGITS[b, e, c].item() + tau * math.log(prior[c] + 1e-9) for c in range(3)]
        total += hand_ce(row, TARGET[b].item())
    return total / 2


def test_balpoe_loss_is_mean_of_three_logit_adjusted_ces():
    loss = LOSSES.build({"type": "balpoe", "args": {"tau_list": [0, 1, 2]}}, "loss", cls_num_list=COUNTS, num_experts=3)
    out = loss(LOGITS, TARGET)
    expected = [hand_la(e, tau) for e, tau in enumerate([0, 1, 2])]
    assert out.per_expert.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.total.item() == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_single_expert_special_cases():
    single = LOGITS[:, :1]
    ce = LOSSES.build("ce", "loss", cls_num_list=COUNTS, num_experts=1)(single, TARGET).total.item()
    bs = LOSSES.build("balanced_softmax", "loss", cls_num_list=COUNTS, num_experts=1)(single, TARGET).total.item()
    la = LOSSES.build({"type": "logit_adjust", "args": {"tau": 0.5}}, "loss", cls_num_list=COUNTS, num_experts=1)(single, TARGET).total.item()
    b0 = LOSSES.build({"type": "balpoe", "args": {"tau_list": [0.0]}}, "loss", cls_num_list=COUNTS, num_experts=1)(single, TARGET).total.item()
    assert ce == pytest.approx(hand_la(0, 0.0), rel=1e-5) and b0 == pytest.approx(ce, rel=1e-6)
    assert bs == pytest.approx(hand_la(0, 1.0), rel=1e-5)
    assert la == pytest.approx(hand_la(0, 0.5), rel=1e-5)
    assert ce == pytest.approx(torch.nn.functional.cross_entropy(single[:, 0], TARGET).item(), rel=1e-6)


def test_loss_rejects_wrong_expert_count():
    loss = LOSSES.build({"type": "balpoe", "args": {"tau_list": [0, 2]}}, "loss", cls_num_list=COUNTS, num_experts=2)
    with pytest.raises(ValueError, match="tau_list"):
        loss(LOGITS, TARGET)


def test_mixup_loss_equals_lambda_weighted_losses_and_soft_target_ce():
    loss = LOSSES.build({"type": "balpoe", "args": {"tau_list": [0, 1, 2]}}, "loss", cls_num_list=COUNTS, num_experts=3)
    images = torch.randn(4, 3, 5, 5)
    target = torch.tensor([0, 1, 2, 1])
    weight = torch.randn(75, 9)

    def model(x):
        logits = (x.flatten(1) @ weight).view(-1, 3, 3)
        return {"logits": logits, "output": logits.mean(1)}

    combiner = MixCombiner(alpha=0.4)
    out = combiner(model, images, target, loss, torch.Generator().manual_seed(0), np.random.default_rng(123))
    lam = float(np.random.default_rng(123).beta(0.4, 0.4))
    perm = torch.randperm(4, generator=torch.Generator().manual_seed(0))
    mixed = lam * images + (1 - lam) * images[perm]
    logits = model(mixed)["logits"]
    prior = torch.tensor(COUNTS, dtype=torch.float) / sum(COUNTS)
    expected = 0.0
    for e, tau in enumerate([0.0, 1.0, 2.0]):
        logp = torch.log_softmax(logits[:, e] + tau * torch.log(prior + 1e-9), dim=1)
        soft = lam * torch.nn.functional.one_hot(target, 3) + (1 - lam) * torch.nn.functional.one_hot(target[perm], 3)
        expected += -(soft * logp).sum(1).mean().item() / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_cutmix_lambda_is_kept_area():
    combiner = MixCombiner(cutmix_alpha=1.0)
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float).view(2, 1, 8, 8)
    perm = torch.tensor([1, 0])
    mixed, lam = combiner.mix_inputs(images, perm, np.random.default_rng(3))
    replaced = (mixed != images).float().mean().item()
    assert lam == pytest.approx(1 - replaced)
