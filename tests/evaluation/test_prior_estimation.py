"""EM test-prior estimation (Saerens et al. 2002) on synthetic posteriors whose calibration is known by construction."""
import math

import pytest
import torch

from longtail.evaluation.report import prior_reports
from longtail.evaluation.hooks import PosthocContext
from longtail.registry import POSTHOC
from longtail.evaluation.prior_estimation import em_prior, source_prior, total_variation, weighted_column_sums
from longtail.utils.metrics import shot_masks
from longtail.utils.errors import ConfigError


def gaussian_log_likelihoods(test_prior, num=4000, seed=0):
    """Labels ~ test_prior, x ~ N(mu_y, I) in 2-D; returns exact log p(x|c) (up to a constant) and the labels."""
    gen = torch.Generator().manual_seed(seed)
    classes = len(test_prior)
    angles = torch.arange(classes, dtype=torch.float64) * (2 * torch.pi / classes)
    means = 2.5 * torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.multinomial(test_prior, num, replacement=True, generator=gen)
    x = means[labels] + torch.randn(num, 2, generator=gen, dtype=torch.float64)
    return -0.5 * torch.cdist(x, means) ** 2, labels


def test_em_recovers_a_known_test_prior_from_uniform_calibrated_posteriors():
    true_prior = torch.tensor([0.5, 0.25, 0.12, 0.08, 0.05], dtype=torch.float64)
    loglik, labels = gaussian_log_likelihoods(true_prior)
    probs = torch.softmax(loglik, dim=1)  # exact posteriors under a uniform prior
    empirical = torch.bincount(labels, minlength=5).double() / len(labels)
    uniform = torch.full((5,), 0.2, dtype=torch.float64)
    estimate = em_prior(probs, uniform)
    assert estimate.sum().item() == pytest.approx(1.0)
    assert total_variation(estimate, empirical) < 0.03
    assert total_variation(uniform, empirical) > 0.3  # the starting point was far off
    # the same data seen through a model calibrated for a different source prior: EM must undo that prior
    source = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4], dtype=torch.float64)
    shifted = torch.softmax(loglik + source.log(), dim=1)
    assert total_variation(em_prior(shifted, source), estimate) < 1e-4


def test_em_step_matches_the_saerens_update_by_hand():
    """One EM step on two samples: q_j = mean_i p_ij w_j / sum_k p_ik w_k, w = q0 / source, written out by hand."""
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]], dtype=torch.float64)
    source = torch.tensor([0.5, 0.5], dtype=torch.float64)
    one_step = em_prior(probs, source, max_iter=1)
    assert one_step.tolist() == pytest.approx([(0.9 + 0.4) / 2, (0.1 + 0.6) / 2])  # w = 1: the mean posterior
    two_steps = em_prior(probs, source, max_iter=2)
    w = [0.65 / 0.5, 0.35 / 0.5]
    rows = [[0.9 * w[0], 0.1 * w[1]], [0.4 * w[0], 0.6 * w[1]]]
    by_hand = [sum(r[j] / sum(r) for r in rows) / 2 for j in range(2)]
    assert two_steps.tolist() == pytest.approx(by_hand, abs=1e-12)
    # float32 posteriors give the same fixed point as float64 ones
    gen = torch.Generator().manual_seed(3)
    many = torch.softmax(3 * torch.randn(500, 7, generator=gen, dtype=torch.float64), dim=1)
    uniform = torch.full((7,), 1 / 7, dtype=torch.float64)
    assert total_variation(em_prior(many.float(), uniform), em_prior(many, uniform)) < 1e-5


def test_weighted_column_sums_cover_every_row_in_blocks_and_the_remainder():
    gen = torch.Generator().manual_seed(4)
    matrix, row_weights = torch.rand(1000, 6, generator=gen), torch.rand(1000, generator=gen)
    by_formula = (matrix.double() * row_weights.double()[:, None]).sum(dim=0)  # 3 blocks of 256 + 232 rows
    assert torch.allclose(weighted_column_sums(matrix, row_weights), by_formula, rtol=1e-6)
    assert weighted_column_sums(matrix, row_weights).dtype == torch.float64
    few = weighted_column_sums(matrix[:3], row_weights[:3])  # fewer rows than one block
    assert torch.allclose(few, (matrix[:3].double() * row_weights[:3, None].double()).sum(dim=0))


def test_source_prior_specs():
    counts = [40, 10]
    assert source_prior("uniform", counts).tolist() == pytest.approx([0.5, 0.5])
    assert source_prior("train", counts).tolist() == pytest.approx([0.8, 0.2])
    assert source_prior("train^0.5", counts).tolist() == pytest.approx([2 / 3, 1 / 3])  # sqrt(0.8) : sqrt(0.2) = 2 : 1
    for bad in ("balanced", "train^x", 0.5):
        with pytest.raises(ConfigError, match="evaluation.source_prior"):
            source_prior(bad, counts)
    assert total_variation(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == pytest.approx(0.5)


def test_estimated_correction_rows_report_prior_tv_and_help_on_a_shifted_set():
    true_prior = torch.tensor([0.6, 0.2, 0.1, 0.06, 0.04], dtype=torch.float64)
    loglik, labels = gaussian_log_likelihoods(true_prior, seed=1)
    expert_logits = loglik.float().unsqueeze(1).repeat(1, 2, 1)  # two identical "experts"
    masks = shot_masks([500, 200, 50, 10, 5])
    subsets = {"shifted": torch.arange(len(labels))}
    context = PosthocContext([100] * 5, {"source_prior": "uniform"})  # balanced source: uniform prior 0.2 per class
    rows = prior_reports(expert_logits, labels, subsets, masks, ("none", "oracle", "estimate"), context=context)
    none, oracle, estimate = rows
    assert [r["posthoc"] for r in rows] == ["none", "oracle", "estimate"]
    assert "prior_tv" in estimate and "prior_tv" not in oracle and estimate["prior_tv"] < 0.03
    assert estimate["all"] > none["all"] + 1.0
    assert abs(estimate["all"] - oracle["all"]) < 1.0


def test_oracle_correction_is_relative_to_the_source_prior():
    """oracle adds log q - log pi_source: by hand on two samples; a uniform source adds log q only (BalPoE)."""
    logits = torch.tensor([[2.0, 1.0], [0.0, 0.5]])
    targets = torch.tensor([0, 0, 0, 1])  # q = (0.75, 0.25)
    train = PosthocContext([80, 20], {"source_prior": "train"})  # pi = (0.8, 0.2)
    corrected, _ = POSTHOC.get("oracle")(logits, targets, train)
    by_hand = torch.tensor([[2.0 + math.log(0.75 / 0.8), 1.0 + math.log(0.25 / 0.2)],
                            [0.0 + math.log(0.75 / 0.8), 0.5 + math.log(0.25 / 0.2)]])
    assert torch.allclose(corrected, by_hand, atol=1e-6)
    uniform, _ = POSTHOC.get("oracle")(logits, targets, PosthocContext([80, 20], {"source_prior": "uniform"}))
    assert torch.allclose(uniform, logits + torch.tensor([math.log(0.75), math.log(0.25)]), atol=1e-6)
    # a train-calibrated model on a uniform test set becomes logit-adjusted: logits - log pi_train
    balanced_targets = torch.tensor([0, 1])
    adjusted, _ = POSTHOC.get("oracle")(logits, balanced_targets, train)
    assert torch.allclose(adjusted - adjusted[:, :1], (logits - torch.tensor([0.8, 0.2]).log())
                          - (logits - torch.tensor([0.8, 0.2]).log())[:, :1], atol=1e-6)
