"""Pure metric functions on logits/labels: accuracy, shot-group accuracy, calibration (ECE/MCE), NLL, Brier."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from longtail.utils.defaults import FEW_THRESHOLD, MANY_THRESHOLD


def shot_masks(cls_num_list: Sequence[int], many_threshold: int = MANY_THRESHOLD,
               few_threshold: int = FEW_THRESHOLD) -> dict[str, torch.Tensor]:
    """Boolean class masks from training counts: many n>many_threshold, few n<few_threshold, medium otherwise."""
    counts = torch.as_tensor(list(cls_num_list))
    many = counts > many_threshold
    few = counts < few_threshold
    return {"many": many, "medium": ~many & ~few, "few": few}


def group_classes(cls_num_list: Sequence[int], group: str, many_threshold: int = MANY_THRESHOLD,
                  few_threshold: int = FEW_THRESHOLD) -> list[int]:
    """Class indices (ascending) of one shot group ('many', 'medium' or 'few'), by the rule of :func:`shot_masks`."""
    masks = shot_masks(cls_num_list, many_threshold, few_threshold)
    if group not in masks:
        raise ValueError(f"unknown class group {group!r}; use one of {', '.join(masks)}")
    return torch.nonzero(masks[group]).flatten().tolist()


def per_class_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class recall and per-class sample counts (recall is nan for classes absent from ``target``)."""
    support = torch.bincount(target, minlength=num_classes).double()
    hits = torch.bincount(target[pred == target], minlength=num_classes).double()
    recall = torch.where(support > 0, hits / support.clamp_min(1), torch.full_like(support, float("nan")))
    return recall, support


def group_accuracy(recall: torch.Tensor, mask: torch.Tensor) -> float:
    """Unweighted mean recall over the classes in ``mask`` that occur in the test set; nan when none do."""
    values = recall[mask]
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else float("nan")


def accuracy_report(logits: torch.Tensor, target: torch.Tensor, masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Micro top-1 ('all', percent) plus many/medium/few class-mean accuracies (percent) for one test set."""
    pred = logits.argmax(dim=1)
    recall, _ = per_class_accuracy(pred, target, logits.shape[1])
    report = {name: 100.0 * group_accuracy(recall, mask.to(recall.device)) for name, mask in masks.items()}
    report["all"] = 100.0 * float((pred == target).double().mean()) if target.numel() else float("nan")
    return report


def calibration_errors(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """Expected and maximum calibration error (percent) with equal-width confidence bins (lower, upper]."""
    confidence, pred = probs.max(dim=1)
    correct = (pred == target).double()
    confidence = confidence.double()
    # bin b holds confidences in (edge_b, edge_b+1] with the edges of np.linspace(0, 1, n + 1), compared exactly as the
    # reference does (ceil(conf * n) differs by one bin for a few confidences one ulp above an edge); 0 is in no bin
    edges = torch.from_numpy(np.linspace(0.0, 1.0, n_bins + 1)).to(confidence.device)
    bins = torch.searchsorted(edges, confidence, right=False) - 1
    valid = bins >= 0
    bins, correct, confidence = bins[valid], correct[valid], confidence[valid]
    count = torch.bincount(bins, minlength=n_bins).double()
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    nonempty = count > 0
    gap = torch.zeros(n_bins, dtype=torch.float64, device=count.device)
    gap[nonempty] = (conf_sum[nonempty] - acc_sum[nonempty]).abs() / count[nonempty]
    total = max(int(probs.shape[0]), 1)
    return {"ece": 100.0 * float((count / total * gap).sum()), "mce": 100.0 * float(gap.max())}


def negative_log_likelihood(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits)."""
    return float(F.cross_entropy(logits.double(), target))


def brier_score(probs: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error between the predicted distribution and the one-hot label (summed over classes)."""
    onehot = F.one_hot(target, probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(dim=1).mean())


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value), ignoring nan entries."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))


def classwise_calibration_error(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> float:
    """Classwise ECE (percent; Kull et al., NeurIPS 2019): for every class c, the probabilities p_c of all samples
    in equal-width bins, sum_b n_b / N |mean p_c - fraction of y = c| in bin b; averaged over classes."""
    n, num_classes = probs.shape
    p = probs.double().clamp(0, 1)
    bins = (p * n_bins).ceil().long().clamp(1, n_bins) - 1  # (lower, upper] bins; 0 goes to the first
    onehot = torch.nn.functional.one_hot(target, num_classes).double()
    offsets = (bins + n_bins * torch.arange(num_classes, device=p.device)).flatten()
    prob_sum = torch.bincount(offsets, weights=p.flatten(), minlength=n_bins * num_classes)
    hit_sum = torch.bincount(offsets, weights=onehot.flatten(), minlength=n_bins * num_classes)
    gaps = (prob_sum - hit_sum).abs() / max(n, 1)  # n_b / N * |mean p - frequency| = |sum p - sum hits| / N
    return 100.0 * float(gaps.view(num_classes, n_bins).sum(dim=1).mean())


def reliability_bins(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> dict[str, list[float]]:
    """Per equal-width confidence bin (lower, upper]: sample count, accuracy and mean confidence of the top-1
    prediction (a reliability diagram's data)."""
    confidence, pred = probs.double().max(dim=1)
    bins = (confidence * n_bins).ceil().long().clamp(1, n_bins) - 1
    count = torch.bincount(bins, minlength=n_bins).double()
    hits = torch.bincount(bins, weights=(pred == target).double(), minlength=n_bins)
    conf = torch.bincount(bins, weights=confidence, minlength=n_bins)
    safe = count.clamp_min(1)
    return {"count": count.tolist(), "accuracy": (hits / safe).tolist(), "confidence": (conf / safe).tolist()}
