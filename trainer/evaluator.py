"""Evaluation: expert logits computed once per checkpoint, then every test prior is an index subset of them."""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from data_loader.loader import BatchLoader
from trainer.prior_estimation import estimated_prior_shift, total_variation
from utils.metrics import accuracy_report, brier_score, calibration_errors, negative_log_likelihood, shot_masks


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """torch.autocast for 'bf16' / 'fp16', a no-op context for 'off'."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


# Optional per-sample model outputs that collect_logits gathers next to the logits (a router's experts used, 1..E).
PER_SAMPLE_OUTPUTS = ("experts_used",)


@torch.inference_mode()
def collect_logits(model: nn.Module, loader: BatchLoader, amp: str = "off",
                   extras: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-expert logits (N, E, C) as float32 on the CPU and the targets (N,), in one pass over ``loader``.

    When ``extras`` is a dict, the PER_SAMPLE_OUTPUTS the model returns are stored in it (CPU tensors of length N).
    """
    model.eval()
    chunks, targets = [], []
    kept: dict[str, list[torch.Tensor]] = {}
    device = loader.device
    for images, target in loader.batches(0):
        with autocast_context(device, amp):
            out = model(images)
        chunks.append(out["logits"].float())
        targets.append(target)
        for key in PER_SAMPLE_OUTPUTS:
            if extras is not None and key in out:
                kept.setdefault(key, []).append(out[key])
    if extras is not None:
        extras.update({key: torch.cat(values).cpu() for key, values in kept.items()})
    return torch.cat(chunks).cpu(), torch.cat(targets).cpu()


def masks_for(cls_num_list: Sequence[int], evaluation: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Many/medium/few class masks from training counts and the configured thresholds."""
    return shot_masks(cls_num_list, evaluation.get("many_threshold", 100), evaluation.get("few_threshold", 20))


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


def empirical_prior(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """q_c = m_c / sum_j m_j of a test set's labels (float64)."""
    counts = torch.bincount(targets, minlength=num_classes).double()
    return counts / counts.sum()


def log_test_prior(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log q_c of a test set's empirical class prior (-inf for absent classes, which are then never predicted)."""
    return torch.log(empirical_prior(targets, num_classes))


def ensemble_logits(expert_logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Aggregate per-expert logits (N, E, C) -> (N, C): the plain mean, or sum_k w_k z_k for given weights (E,)."""
    if weights is None:
        return expert_logits.mean(dim=1)
    return torch.einsum("nec,e->nc", expert_logits, weights.to(expert_logits.device, expert_logits.dtype))


POSTHOC_MODES = ("none", "oracle", "estimate")


def prior_reports(expert_logits: torch.Tensor, targets: torch.Tensor, subsets: dict[str, torch.Tensor],
                  masks: dict[str, torch.Tensor], posthoc: Iterable[str | bool] = ("none",),
                  weights: dict[str, torch.Tensor] | None = None,
                  source_prior: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """many/medium/few/all per test prior (index subset) for each post-hoc mode.

    Modes: 'none'; 'oracle' adds the log empirical test prior to the logits; 'estimate' adds log q - log
    ``source_prior`` with q estimated by EM from the unlabeled predictions (row gains ``prior_tv``, the
    total-variation distance of q to the true test prior). ``weights`` (prior -> (E,)) replaces the plain expert
    mean (test-time aggregation; rows gain ``w0..w{E-1}``). True / False are accepted for 'oracle' / 'none'.
    """
    rows = []
    for mode in posthoc:
        mode = {True: "oracle", False: "none"}.get(mode, mode)  # type: ignore[call-overload]
        if mode not in POSTHOC_MODES:
            raise ValueError(f"unknown post-hoc correction {mode!r}; use one of {', '.join(POSTHOC_MODES)}")
        for prior, idx in subsets.items():
            weight = weights[prior] if weights else None
            logits, target = ensemble_logits(expert_logits[idx].double(), weight), targets[idx]
            extra: dict[str, Any] = {}
            if mode == "oracle":
                logits = logits + log_test_prior(target, logits.shape[1])
            elif mode == "estimate":
                if source_prior is None:
                    raise ValueError("post-hoc mode 'estimate' needs the assumed source prior")
                shift, estimate = estimated_prior_shift(logits, source_prior)
                logits = logits + shift
                extra["prior_tv"] = total_variation(estimate, empirical_prior(target, logits.shape[1]))
            if weight is not None:
                extra.update({f"w{e}": float(w) for e, w in enumerate(weight.tolist())})
            rows.append({"prior": prior, "posthoc": mode, **accuracy_report(logits, target, masks), "n_images": len(idx), **extra})
    return rows


def validation_metrics(model: nn.Module, loader: BatchLoader, masks: dict[str, torch.Tensor], amp: str = "off") -> dict[str, float]:
    """Metrics logged during training: accuracy all/many/medium/few and CE of the mean logits on the test loader."""
    expert_logits, targets = collect_logits(model, loader, amp)
    mean_logits = expert_logits.mean(dim=1)
    report = accuracy_report(mean_logits, targets, masks)
    return {"val_accuracy": report["all"], "val_many": report["many"], "val_medium": report["medium"],
            "val_few": report["few"], "val_loss": negative_log_likelihood(mean_logits, targets)}
