"""Label-shift estimators (evaluation/estimators.py) against constructions whose answer is known."""
from __future__ import annotations

import math

import pytest
import torch

from longtail.evaluation.estimators import (apply_calibration, bbse_weights, fit_calibration, joint_confusion, nnls,
                                            predicted_distribution, rlls_rho, rlls_weights, weights_to_prior)
from longtail.evaluation.hooks import PosthocContext
from longtail.evaluation.prior_estimation import jensen_shannon, total_variation
from longtail.registry import POSTHOC
from longtail.utils.errors import ConfigError


def logits_predicting(labels: list[int], predictions: list[int], num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose argmax is ``predictions`` (one-hot times 5), with the true ``labels``."""
    logits = torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float() * 5
    return logits, torch.tensor(labels)


def designed_set(per_class: list[int], confusion_rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class[j] images of class j, predicted as class i for exactly per_class[j] * P[i][j] of them."""
    labels, predictions = [], []
    for j, n in enumerate(per_class):
        for i, rate in enumerate(row[j] for row in confusion_rows):
            k = round(n * rate)
            labels += [j] * k
            predictions += [i] * k
    return logits_predicting(labels, predictions, len(per_class))


# P(yhat = i | y = j): columns sum to 1, multiples of 1/10
CONDITIONAL = [[0.8, 0.1, 0.2], [0.1, 0.7, 0.2], [0.1, 0.2, 0.6]]


def test_bbse_recovers_the_test_prior_exactly_from_an_exact_confusion_matrix() -> None:
    """Held-out and test sets built with exactly the same conditional confusion P(yhat | y): BBSE's w = C^-1 mu gives
    the test set's true prior (prior_tv 0), whatever the held-out label distribution."""
    h_logits, h_targets = designed_set([500, 200, 100], CONDITIONAL)
    t_logits, t_targets = designed_set([100, 300, 600], CONDITIONAL)
    context = PosthocContext([500, 200, 100], {"source_prior": "uniform"}, h_logits, h_targets)
    _, extra = POSTHOC.get("bbse")(t_logits, t_targets, context)
    assert extra["prior_tv"] == pytest.approx(0.0, abs=1e-12) and extra["prior_js"] == pytest.approx(0.0, abs=1e-12)
    # the same by the formula: C = P diag(p_s), mu = P q -> q = w * p_s with w = C^-1 mu
    confusion = joint_confusion(h_logits, h_targets, 3)
    p_s = torch.tensor([500, 200, 100], dtype=torch.float64) / 800
    assert torch.allclose(confusion, torch.tensor(CONDITIONAL, dtype=torch.float64) * p_s, atol=1e-12)
    q = weights_to_prior(bbse_weights(confusion, predicted_distribution(t_logits, 3)), p_s)
    assert q.tolist() == pytest.approx([0.1, 0.3, 0.6], abs=1e-12)


def test_rlls_without_regularisation_equals_bbse() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        conditional = torch.rand(6, 6, generator=gen, dtype=torch.float64) + 4 * torch.eye(6, dtype=torch.float64)
        conditional /= conditional.sum(dim=0, keepdim=True)
        source = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
        source /= source.sum()
        target = torch.rand(6, generator=gen, dtype=torch.float64) + 0.05
        target /= target.sum()
        confusion, mu = conditional * source, conditional @ target
        assert torch.allclose(rlls_weights(confusion, mu, 0.0), bbse_weights(confusion, mu), atol=1e-10)
        assert torch.allclose(weights_to_prior(rlls_weights(confusion, mu, 0.0), source), target, atol=1e-10)


def test_rlls_regularisation_is_optimal_and_shrinks_towards_no_shift() -> None:
    """With rho > 0 the returned w minimises ||C(w - 1) - b|| + rho ||w - 1|| over w >= 0 (no random feasible
    perturbation does better) and moves towards w = 1 as rho grows."""
    gen = torch.Generator().manual_seed(1)
    conditional = torch.rand(5, 5, generator=gen, dtype=torch.float64) + 2 * torch.eye(5, dtype=torch.float64)
    conditional /= conditional.sum(dim=0, keepdim=True)
    source = torch.full((5,), 0.2, dtype=torch.float64)
    target = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    confusion, mu = conditional * source, conditional @ target

    def objective(w: torch.Tensor, rho: float) -> float:
        return float(torch.linalg.vector_norm(confusion @ w - mu) + rho * torch.linalg.vector_norm(w - 1))

    distances = []
    for rho in (0.001, 0.05, 0.2, 1.0):
        w = rlls_weights(confusion, mu, rho)
        best = objective(w, rho)
        for _ in range(300):
            trial = (w + 0.02 * torch.randn(5, generator=gen, dtype=torch.float64)).clamp_min(0)
            assert objective(trial, rho) >= best - 1e-9
        distances.append(float(torch.linalg.vector_norm(w - 1)))
    assert distances[0] >= distances[1] >= distances[2] >= distances[3] and distances[3] < distances[0]
    # the norm (not squared) residual is an exact penalty: a small rho keeps BBSE's exact solution
    assert torch.allclose(rlls_weights(confusion, mu, 0.001), bbse_weights(confusion, mu), atol=1e-8)
    assert rlls_rho(10, 1000) == pytest.approx(0.01 * 3 * (2 * math.log(400) / 3000 + math.sqrt(2 * math.log(400) / 1000)))


def test_nnls_against_the_unconstrained_solution_and_a_clipped_case() -> None:
    import numpy as np

    a = np.array([[2.0, 0.0], [0.0, 1.0]])
    assert nnls(a, np.array([4.0, 3.0])).tolist() == pytest.approx([2.0, 3.0])
    assert nnls(a, np.array([4.0, -3.0])).tolist() == pytest.approx([2.0, 0.0])  # the negative coordinate -> 0


def synthetic_miscalibrated(temperature: float, bias: list[float], n: int = 80_000, seed: int = 0):
    """True logits z0, labels y ~ softmax(z0); the model reports z = T (z0 - b), so z / T + b = z0 is calibrated."""
    gen = torch.Generator().manual_seed(seed)
    true_logits = 1.5 * torch.randn(n, len(bias), generator=gen, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(true_logits, dim=1), 1, generator=gen).squeeze(1)
    reported = temperature * (true_logits - torch.tensor(bias, dtype=torch.float64))
    return reported.float(), labels


def test_bcts_recovers_the_generating_temperature_and_biases() -> None:
    bias = [0.8, -0.3, 0.0, -0.5]
    logits, labels = synthetic_miscalibrated(2.5, bias)
    params = fit_calibration(logits, labels, "bcts")
    centred = torch.tensor(bias, dtype=torch.float64) - sum(bias) / 4
    assert float(params["temperature"]) == pytest.approx(2.5, rel=0.03)
    assert torch.allclose(params["bias"], centred, atol=0.05)
    # temperature scaling alone recovers T when there is no bias; vector scaling recovers the per-class scale 1/T
    logits, labels = synthetic_miscalibrated(0.5, [0.0] * 4, seed=1)
    assert float(fit_calibration(logits, labels, "ts")["temperature"]) == pytest.approx(0.5, rel=0.03)
    vs = fit_calibration(logits, labels, "vs")
    assert torch.allclose(vs["scale"], torch.full((4,), 2.0, dtype=torch.float64), rtol=0.05)
    calibrated = apply_calibration(logits, params)
    assert calibrated.shape == logits.shape
    with pytest.raises(ConfigError, match="valid: ts, bcts, vs"):
        fit_calibration(logits, labels, "platt")


def test_calibrated_em_estimates_a_shifted_prior() -> None:
    """Held-out data from the source prior and a test set from another prior, both from the same miscalibrated
    model: BCTS + EM estimates the test prior closely; the correction changes predictions towards it."""
    bias = [0.4, -0.4, 0.0]
    logits, labels = synthetic_miscalibrated(2.0, bias, n=60_000, seed=3)
    heldout = torch.arange(0, 30_000)
    # the test set: resample the other half to the prior (0.1, 0.2, 0.7)
    rest = torch.arange(30_000, 60_000)
    chosen = torch.cat([rest[labels[rest] == c][:k] for c, k in enumerate((1000, 2000, 7000))])
    context = PosthocContext([1, 1, 1], {"source_prior": "uniform"}, logits[heldout], labels[heldout])
    corrected, extra = POSTHOC.get("bcts_em")(logits[chosen], labels[chosen], context)
    assert extra["prior_tv"] < 0.03
    before = (logits[chosen].argmax(1) == labels[chosen]).double().mean()
    after = (corrected.argmax(1) == labels[chosen]).double().mean()
    assert after > before


def test_estimators_without_heldout_data_explain_how_to_get_it() -> None:
    context = PosthocContext([10, 5], {"source_prior": "uniform"})
    for name in ("bbse", "rlls", "bcts_em", "ts"):
        with pytest.raises(ConfigError, match="holdout_fraction"):
            POSTHOC.get(name)(torch.zeros(3, 2), torch.tensor([0, 1, 0]), context)


def test_distances_by_hand() -> None:
    p, q = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert jensen_shannon(p, q) == pytest.approx(math.log(2))
    assert jensen_shannon(p, p) == pytest.approx(0.0)
    a, b = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    m = [0.7, 0.3]
    by_hand = 0.5 * (0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3)) + \
        0.5 * (0.9 * math.log(0.9 / 0.7) + 0.1 * math.log(0.1 / 0.3))
    assert jensen_shannon(a, b) == pytest.approx(by_hand) and m
    assert total_variation(a, b) == pytest.approx(0.4)
