"""Post-hoc corrections of the ensemble logits for a shifted test prior (docs/methods.md, evaluation protocol).

* ``none``: the logits as they are.
* ``oracle``: add log q_c - log pi_source with q the empirical class prior of the test set itself (BalPoE's "known
  test prior"; with the default uniform source prior this is log q_c plus a constant, exactly BalPoE's correction;
  classes absent from the test set get -inf and are never predicted).
* ``estimate``: add log q_est - log pi_source with q_est estimated by EM from the unlabeled predictions
  (evaluation.source_prior says which prior the posteriors assume); adds ``prior_tv`` and ``prior_js``, the
  total-variation distance and Jensen-Shannon divergence of the estimate to the true test prior.
"""
from __future__ import annotations

from typing import Any

import torch

from longtail.evaluation.hooks import PosthocContext
from longtail.registry import POSTHOC
from longtail.evaluation.prior_estimation import estimated_prior_shift, jensen_shannon, source_prior, total_variation


def empirical_prior(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """q_c = m_c / sum_j m_j of a test set's labels (float64)."""
    counts = torch.bincount(targets, minlength=num_classes).double()
    return counts / counts.sum()


def log_test_prior(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log q_c of a test set's empirical class prior (-inf for absent classes, which are then never predicted)."""
    return torch.log(empirical_prior(targets, num_classes))


@POSTHOC.register("none")
def no_correction(logits: torch.Tensor, targets: torch.Tensor, context: PosthocContext) -> tuple[torch.Tensor, dict[str, Any]]:
    """The logits unchanged."""
    return logits, {}


@POSTHOC.register("oracle")
def oracle_prior(logits: torch.Tensor, targets: torch.Tensor, context: PosthocContext) -> tuple[torch.Tensor, dict[str, Any]]:
    """Add log q - log pi_source with q the test set's empirical prior (the true prior shift, as 'estimate' with q known)."""
    shift = log_test_prior(targets, logits.shape[1])
    spec = context.evaluation.get("source_prior", "uniform")
    if spec != "uniform":  # a uniform source only shifts every logit by the same constant
        shift = shift - torch.log(source_prior(spec, context.cls_num_list)).to(shift.device)
    return logits + shift.to(logits), {}


oracle_prior.caption = " with posthoc bias correction (true test prior)"  # type: ignore[attr-defined]


@POSTHOC.register("estimate")
def estimated_prior(logits: torch.Tensor, targets: torch.Tensor, context: PosthocContext) -> tuple[torch.Tensor, dict[str, Any]]:
    """Add log q_est - log pi_source (EM estimate from the unlabeled predictions) and report its TV distance."""
    source = source_prior(context.evaluation["source_prior"], context.cls_num_list)
    shift, estimate = estimated_prior_shift(logits, source)
    truth = empirical_prior(targets, logits.shape[1]).to(estimate.device)
    return logits + shift.to(logits), {"prior_tv": total_variation(estimate, truth),
                                       "prior_js": jensen_shannon(estimate, truth)}


estimated_prior.caption = " with posthoc bias correction (EM-estimated test prior)"  # type: ignore[attr-defined]
