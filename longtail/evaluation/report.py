"""Reports from logits: uniform-test metrics, per-test-prior accuracies (post-hoc corrections, aggregation
weights) and the validation metrics logged during training."""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F

from longtail.evaluation.hooks import PosthocContext
from longtail.registry import AGGREGATIONS, POSTHOC
from longtail.utils.metrics import accuracy_report, brier_score, calibration_errors, negative_log_likelihood


def uniform_report(expert_logits: torch.Tensor, targets: torch.Tensor, masks: dict[str, torch.Tensor],
                   n_bins: int = 15) -> dict[str, float]:
    """Top-1 all/many/medium/few, ECE/MCE, NLL, Brier of the ensemble plus each expert's top-1 (all in percent)."""
    mean_logits = expert_logits.mean(dim=1)
    report = accuracy_report(mean_logits, targets, masks)
    probs = F.softmax(mean_logits.double(), dim=1)
    report.update(calibration_errors(probs, targets, n_bins))
    report["nll"] = negative_log_likelihood(mean_logits, targets)
    report["brier"] = brier_score(probs, targets)
    for e in range(expert_logits.shape[1]):
        report[f"expert{e}"] = 100.0 * float((expert_logits[:, e].argmax(1) == targets).double().mean())
    return report


def ensemble_logits(expert_logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Aggregate per-expert logits (N, E, C) -> (N, C): the plain mean, or sum_k w_k z_k for given weights, one
    vector (E,) for every image or one row per image (N, E)."""
    if weights is None:
        return expert_logits.mean(dim=1)
    weights = weights.to(expert_logits.device, expert_logits.dtype)
    return torch.einsum("nec,ne->nc" if weights.dim() == 2 else "nec,e->nc", expert_logits, weights)


@AGGREGATIONS.register("mean")
def mean_aggregation(context: Any) -> None:
    """The plain mean of the expert logits (what every model predicts by default)."""
    return None


def prior_reports(expert_logits: torch.Tensor, targets: torch.Tensor, subsets: dict[str, torch.Tensor],
                  masks: dict[str, torch.Tensor], posthoc: Iterable[str] = ("none",),
                  weights: dict[str, torch.Tensor] | None = None,
                  context: PosthocContext | None = None) -> list[dict[str, Any]]:
    """many/medium/few/all per test prior (index subset) for each post-hoc correction (evaluation/posthoc.py).

    ``weights`` (prior -> (E,), or (N_prior, E) per image in the order of the prior's indices) replaces the plain
    expert mean (test-time aggregation; rows gain ``w0..w{E-1}``, the mean over images for per-image weights).
    Everything stays in the logits' dtype (float32) and on their device: the ensemble is formed once, and each
    prior only indexes it, so memory is O(N x C) whatever the number of priors.
    """
    context = context or PosthocContext([], {})
    mean_logits = None if weights else ensemble_logits(expert_logits)
    rows = []
    for mode in posthoc:
        correct = POSTHOC.get(mode, where="posthoc correction")
        for prior, idx in subsets.items():
            weight = weights[prior] if weights else None
            idx = idx.to(targets.device)
            target = targets[idx]
            ensemble = mean_logits[idx] if weight is None else ensemble_logits(expert_logits[idx], weight)
            logits, extra = correct(ensemble, target, context)
            if weight is not None:  # per-image weights (a streaming aggregation) are shown as their mean
                shown = weight if weight.dim() == 1 else weight.mean(dim=0)
                extra.update({f"w{e}": float(w) for e, w in enumerate(shown.tolist())})
            rows.append({"prior": prior, "posthoc": mode, **accuracy_report(logits, target, masks), "n_images": len(idx), **extra})
    return rows
