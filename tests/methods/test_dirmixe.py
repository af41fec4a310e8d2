"""DirMixE's loss (longtail/methods/dirmixe.py) against a hand computation, its pool, its epoch order and its
derived settings."""
from __future__ import annotations

import math

import pytest
import torch

from longtail.methods.dirmixe import dirichlet_centres, resolve_dirmixe_block
from longtail.registry import LOSSES
from longtail.utils.errors import ConfigError

COUNTS = [60, 30, 10]


def build(trials: int = 2, pool_batches: int = 3, power: float = 1.3, lambda_var: float = 2.0, seed: int = 0):
    return LOSSES.build({"type": "dirmixe", "args": {"trials": trials, "pool_batches": pool_batches, "power": power,
                                                     "lambda_var": lambda_var, "seed": seed}},
                        "loss", cls_num_list=COUNTS, num_experts=3)


def hand_loss(logits: list, target: list, experts: list, draws: list, power: float, lambda_var: float,
              regularise: bool) -> float:
    """Written out: L_t = mean_i [log sum_c exp(s_ic) - s_iy], s_ic = z_i,k_t,c - log((w_tc / pi_c)^power + 1e-9);
    total = mean_t L_t (+ lambda * sum_{L_t > m} (L_t - m)^2 / max(count - 1, 1))."""
    prior = [n / sum(COUNTS) for n in COUNTS]
    losses = []
    for k, w in zip(experts, draws):
        per_image = []
        for z, y in zip(logits, target):
            s = [z[k][c] - math.log((w[c] / prior[c]) ** power + 1e-9) for c in range(len(COUNTS))]
            per_image.append(math.log(sum(math.exp(v) for v in s)) - s[y])
        losses.append(sum(per_image) / len(per_image))
    mean = sum(losses) / len(losses)
    if not regularise:
        return mean
    above = [l for l in losses if l > mean]
    return mean + lambda_var * sum((l - mean) ** 2 for l in above) / max(len(above) - 1, 1)


@pytest.mark.parametrize("regularise", [False, True])
def test_loss_equals_hand_computation(regularise: bool) -> None:
    experts = [0, 2, 1]
    draws = [[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]]
    criterion = build(trials=3, pool_batches=1, power=1.3, lambda_var=2.0)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    criterion.set_pool(torch.tensor(experts), torch.tensor(draws, dtype=torch.float64), prior, 1.3)
    criterion.regularise = regularise
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 3, generator=gen) * 2
    target = torch.tensor([0, 1, 2, 0])
    expected = hand_loss(logits.tolist(), target.tolist(), experts, draws, 1.3, 2.0, regularise)
    assert float(criterion(logits, target).total) == pytest.approx(expected, rel=1e-5)


def test_semi_variance_uses_only_losses_above_the_mean() -> None:
    """Losses 1, 2, 6: mean 3, only 6 is above: (6 - 3)^2 / max(1 - 1, 1) = 9."""
    from longtail.methods.dirmixe import semi_variance

    assert float(semi_variance(torch.tensor([1.0, 2.0, 6.0]))) == pytest.approx(9.0)
    # 1, 5, 6: mean 4, above: 5 and 6 -> (1 + 4) / (2 - 1) = 5
    assert float(semi_variance(torch.tensor([1.0, 5.0, 6.0]))) == pytest.approx(5.0)


def test_pool_draws_are_seeded_and_centred() -> None:
    """Same seed -> same pool; another seed -> another; with alpha_sum 10000 every draw lies within a few percent
    of its expert's centre (training prior, uniform, inverse prior)."""
    a, b, c = build(pool_batches=50, seed=1), build(pool_batches=50, seed=1), build(pool_batches=50, seed=2)
    assert torch.equal(a.pool_adjustment, b.pool_adjustment) and torch.equal(a.pool_experts, b.pool_experts)
    assert not torch.equal(a.pool_adjustment, c.pool_adjustment)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    draws = prior * torch.exp(a.pool_adjustment.double() / 1.3)  # invert log((w / pi)^p) (the 1e-9 is negligible)
    centres = dirichlet_centres(COUNTS)[a.pool_experts]
    assert torch.allclose(draws, centres, rtol=0.15)
    assert set(a.pool_experts.tolist()) == {0, 1, 2}


def test_each_epoch_walks_the_whole_pool_in_a_new_order() -> None:
    """pool_batches steps of ``trials`` draws use every pool entry once; the order changes with the epoch and is
    the same when the epoch is replayed (resume)."""
    criterion = build(trials=2, pool_batches=3)
    logits, target = torch.zeros(2, 3, 3), torch.tensor([0, 1])

    def rows_of_epoch(epoch: int) -> list[int]:
        criterion.on_epoch_start(epoch)
        used = []
        for _ in range(3):
            position = int(criterion.position)
            used += criterion.order[[position * 2, position * 2 + 1]].tolist()
            criterion(logits, target)
        return used

    first, second, replay = rows_of_epoch(1), rows_of_epoch(2), rows_of_epoch(1)
    assert sorted(first) == sorted(second) == list(range(6))
    assert first != second and first == replay


def test_resolve_derives_pool_size_schedule_and_seed() -> None:
    config = {"seed": 7, "trainer": {"epochs": 50},
              "data_loader": {"type": "fmnist_lt", "args": {"imb_factor": 0.01, "batch_size": 100}}}
    args = resolve_dirmixe_block({"type": "dirmixe", "args": {}}, config)["args"]
    from longtail.data_loader.profiles import lt_class_counts

    assert args["pool_batches"] == math.ceil(sum(lt_class_counts(6000, 10, 0.01)) / 100)
    assert args["regularise_from_epoch"] == int(0.8 * 51) and args["seed"] == 7


def test_wrong_expert_count_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="num_experts=3"):
        LOSSES.build({"type": "dirmixe", "args": {}}, "loss", cls_num_list=COUNTS, num_experts=2)
