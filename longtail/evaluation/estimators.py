"""Label-shift estimators beside EM (docs/test_agnostic.md): each estimates the test prior q of one test set from its
unlabeled predictions plus labelled held-out data from the source (training) distribution, and corrects the logits.

* ``bbse``: black-box shift estimation (Lipton, Wang & Smola, ICML 2018): with the held-out joint confusion matrix
  C_ij = P_s(yhat = i, y = j) and the test set's predicted-label distribution mu_i = P_t(yhat = i), the importance
  weights are w = C^-1 mu (clipped at 0), q = w * p_s (renormalised), p_s the held-out label distribution.
* ``rlls``: regularised learning under label shift (Azizzadenesheli et al., ICLR 2019): theta = w - 1 minimises
  ||C theta - b||_2 + rho ||theta||_2 subject to theta >= -1, b = mu - C 1, rho = alpha * 3 Delta_C with
  Delta_C = 2 log(2k / delta) / (3 n) + sqrt(2 log(2k / delta) / n) (their code: delta 0.05, alpha 0.01). With
  rho = 0 it is BBSE (when BBSE's weights are >= 0).
* ``ts_em`` / ``vs_em`` / ``bcts_em``: MLLS, i.e. EM (Saerens et al., 2002), on posteriors calibrated on the held-out
  data by temperature scaling, vector scaling or bias-corrected temperature scaling (Alexandari, Kundaje &
  Shrikumar, ICML 2020, "Maximum likelihood with bias-corrected calibration is hard-to-beat at label shift
  adaptation"); the calibrated posteriors refer to the held-out prior p_s, so EM starts from p_s and the logits are
  corrected by log q - log p_s.
* ``ts``: temperature scaling alone (a calibration step: the accuracy is unchanged, ECE / NLL / Brier change).

BBSE and RLLS correct the uncalibrated logits by log q - log pi_source (``evaluation.source_prior``), exactly as the
``oracle`` and ``estimate`` corrections do, so their accuracies differ from the oracle's only through the estimate.
Every estimator adds ``prior_tv`` (total variation) and ``prior_js`` (Jensen-Shannon divergence, natural log) of its
estimate to the test set's true prior. The held-out logits come with the PosthocContext (``heldout_logits``).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from longtail.evaluation.hooks import PosthocContext
from longtail.evaluation.posthoc import empirical_prior
from longtail.evaluation.prior_estimation import em_prior, jensen_shannon, source_prior, total_variation
from longtail.registry import POSTHOC
from longtail.utils.errors import ConfigError

TINY = torch.finfo(torch.float64).tiny


def estimate_columns(estimate: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """prior_tv and prior_js of an estimated prior to the test set's empirical prior."""
    truth = empirical_prior(targets, estimate.shape[0]).to(estimate.device)
    return {"prior_tv": total_variation(estimate, truth), "prior_js": jensen_shannon(estimate, truth)}


# ---- calibration on held-out data

def _fit(parameters: list[torch.Tensor], objective: Callable[[], torch.Tensor], max_iter: int = 200) -> None:
    """Minimise ``objective`` over ``parameters`` with L-BFGS (strong Wolfe line search), in place."""
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    optimizer.step(closure)


def fit_calibration(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """Calibration parameters minimising the NLL of the held-out (logits, targets), float64:
    ts: z / T; bcts: z / T + b; vs: a * z + b (per class a, b). b is centred (softmax ignores a constant)."""
    z, y = logits.detach().clone().double(), targets.detach().clone()  # (no inference tensors in autograd)
    num_classes = z.shape[1]
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    scale = torch.ones(num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    forms: dict[str, tuple[list[torch.Tensor], Callable[[], torch.Tensor]]] = {
        "ts": ([log_t], lambda: z * torch.exp(-log_t)),
        "bcts": ([log_t, bias], lambda: z * torch.exp(-log_t) + bias),
        "vs": ([scale, bias], lambda: z * scale + bias),
    }
    if kind not in forms:
        raise ConfigError(f"unknown calibration {kind!r}; valid: {', '.join(forms)}")
    parameters, calibrated = forms[kind]
    _fit(parameters, lambda: F.cross_entropy(calibrated(), y))
    with torch.no_grad():
        return {"temperature": torch.exp(log_t).detach(), "scale": scale.detach(),
                "bias": (bias - bias.mean()).detach(), "kind": kind}  # type: ignore[dict-item]


def apply_calibration(logits: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Calibrated logits (float64) of a fitted calibration."""
    z = logits.double()
    if params["kind"] == "vs":
        return z * params["scale"].to(z.device) + params["bias"].to(z.device)
    z = z / params["temperature"].to(z.device)
    return z + params["bias"].to(z.device) if params["kind"] == "bcts" else z


# ---- confusion-matrix estimators

def joint_confusion(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C_ij = P(yhat = i, y = j) on labelled held-out data (float64)."""
    pred = logits.argmax(dim=1)
    flat = torch.bincount(pred * num_classes + targets, minlength=num_classes * num_classes).double()
    return flat.view(num_classes, num_classes) / len(targets)


def predicted_distribution(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mu_i = P(yhat = i) of a test set's hard predictions (float64)."""
    return torch.bincount(logits.argmax(dim=1), minlength=num_classes).double() / logits.shape[0]


def weights_to_prior(weights: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """q proportional to max(w, 0) * p_s (uniform when every weight is 0)."""
    q = weights.clamp_min(0) * source
    return q / q.sum() if q.sum() > 0 else torch.full_like(q, 1.0 / len(q))


def bbse_weights(confusion: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """w = C^-1 mu (least squares when C is singular), clipped at 0 (Lipton et al.)."""
    try:
        return torch.linalg.solve(confusion, mu).clamp_min(0)
    except RuntimeError:  # singular: a class never predicted or never present in the held-out data
        return torch.linalg.lstsq(confusion, mu[:, None]).solution[:, 0].clamp_min(0)


def nnls(matrix: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """argmin_{x >= 0} ||A x - b||_2 by the Lawson-Hanson active-set method (exact in finitely many steps)."""
    m, n = matrix.shape
    tol = 10 * np.finfo(np.float64).eps * np.abs(matrix).sum(axis=0).max() * max(m, n)
    passive, x = np.zeros(n, dtype=bool), np.zeros(n)
    gradient = matrix.T @ (rhs - matrix @ x)
    for _ in range(3 * n + 10):
        if passive.all() or gradient[~passive].max() <= tol:
            break
        passive[np.flatnonzero(~passive)[np.argmax(gradient[~passive])]] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(matrix[:, passive], rhs, rcond=None)[0]
            if (z[passive] > tol).all():
                break
            blocking = passive & (z <= tol)
            step = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + step * (z - x)
            passive &= x > tol
        x = z
        gradient = matrix.T @ (rhs - matrix @ x)
    return x


def nonnegative_ridge(confusion: torch.Tensor, mu: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_{w >= 0} ||C w - mu||^2 + ridge ||w - 1||^2 (an NNLS problem on [C; sqrt(ridge) I])."""
    c, m = confusion.double().cpu().numpy(), mu.double().cpu().numpy()
    if ridge > 0:
        root = math.sqrt(ridge)
        c, m = np.vstack([c, root * np.eye(len(m))]), np.concatenate([m, root * np.ones(len(m))])
    return torch.from_numpy(nnls(c, m)).to(mu.device)


def exact_penalty_holds(confusion: torch.Tensor, mu: torch.Tensor, w: torch.Tensor, rho: float) -> bool:
    """True when BBSE's solution w (C w = mu, every w > 0) also minimises the RLLS objective: at r = 0 the
    subgradient of ||r|| is {C^T u : ||u|| <= 1}, so optimality needs ||rho C^-T theta / ||theta|| || <= 1."""
    theta = w - 1
    if not bool((w > 0).all()) or float(torch.linalg.vector_norm(confusion @ w - mu)) > 1e-12:
        return False
    if float(torch.linalg.vector_norm(theta)) == 0.0:
        return True
    try:
        u = torch.linalg.solve(confusion.T, theta / torch.linalg.vector_norm(theta))
    except RuntimeError:
        return False
    return float(rho * torch.linalg.vector_norm(u)) <= 1.0


def rlls_weights(confusion: torch.Tensor, mu: torch.Tensor, rho: float) -> torch.Tensor:
    """min_{theta >= -1} ||C theta - b|| + rho ||theta||, b = mu - C 1, as w = 1 + theta.

    The minimiser is a point of the path w(lambda) = argmin_{w >= 0} ||C w - mu||^2 + lambda ||w - 1||^2 (the
    KKT conditions coincide for lambda = rho ||r|| / ||theta||), so the objective is minimised over lambda: a grid
    of decades, then golden-section refinement of log(lambda); lambda = 0 (BBSE's non-negative least squares) and
    w = 1 (no shift, lambda -> infinity) are candidates too."""
    def objective(w: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(confusion @ w - mu) + rho * torch.linalg.vector_norm(w - 1))

    candidates = {0.0: nonnegative_ridge(confusion, mu, 0.0), float("inf"): torch.ones_like(mu)}
    if rho <= 0 or exact_penalty_holds(confusion, mu, candidates[0.0], rho):
        return candidates[0.0]
    scale = float(torch.linalg.matrix_norm(confusion.T @ confusion, ord=2))
    for exponent in range(-8, 5):
        candidates[scale * 10.0 ** exponent] = nonnegative_ridge(confusion, mu, scale * 10.0 ** exponent)
    best = min(candidates, key=lambda lam: objective(candidates[lam]))
    if 0 < best < float("inf"):
        lo, hi = math.log(best) - math.log(10), math.log(best) + math.log(10)
        ratio = (math.sqrt(5) - 1) / 2
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fa, fb = objective(nonnegative_ridge(confusion, mu, math.exp(a))), objective(nonnegative_ridge(confusion, mu, math.exp(b)))
        for _ in range(20):
            if fa < fb:
                hi, b, fb = b, a, fa
                a = hi - ratio * (hi - lo)
                fa = objective(nonnegative_ridge(confusion, mu, math.exp(a)))
            else:
                lo, a, fa = a, b, fb
                b = lo + ratio * (hi - lo)
                fb = objective(nonnegative_ridge(confusion, mu, math.exp(b)))
        middle = math.exp((lo + hi) / 2)
        candidates[middle] = nonnegative_ridge(confusion, mu, middle)
    return candidates[min(candidates, key=lambda lam: objective(candidates[lam]))]


def rlls_rho(num_classes: int, n_heldout: int, alpha: float = 0.01, delta: float = 0.05) -> float:
    """rho = alpha * 3 Delta_C, Delta_C = 2 log(2k/delta) / (3n) + sqrt(2 log(2k/delta) / n) (RLLS's code)."""
    log_term = math.log(2 * num_classes / delta)
    return alpha * 3 * (2 * log_term / (3 * n_heldout) + math.sqrt(2 * log_term / n_heldout))


# ---- the registered corrections

def heldout(context: PosthocContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out (logits, targets) of the context, or a clear error naming how to get them."""
    if getattr(context, "heldout_logits", None) is None:
        raise ConfigError(f"correction {name!r} needs labelled held-out data from the training distribution: train "
                          "with a held-out split (data_loader.args.holdout_fraction > 0, e.g. --set "
                          "data_loader.args.holdout_fraction=0.1) or use a data set with a 'val' split, and evaluate "
                          "the checkpoint (or a logits file written from it) so that its held-out logits are collected")
    return context.heldout_logits, context.heldout_targets  # type: ignore[attr-defined]


def cached(context: PosthocContext, key: str, compute: Callable[[], Any]) -> Any:
    """A value computed once per context (one checkpoint and ensemble): calibrations, confusion matrices."""
    store = context.cache
    if key not in store:
        store[key] = compute()
    return store[key]


def shift_by_prior(logits: torch.Tensor, estimate: torch.Tensor, context: PosthocContext) -> torch.Tensor:
    """logits + log q_est - log pi_source (evaluation.source_prior), as the oracle correction."""
    source = source_prior(context.evaluation.get("source_prior", "uniform"), context.cls_num_list).to(logits.device)
    shift = torch.log(estimate.clamp_min(TINY)) - torch.log(source.clamp_min(TINY))
    return logits + shift.to(logits)


def heldout_prior(context: PosthocContext, num_classes: int) -> torch.Tensor:
    """p_s: the label distribution of the held-out data."""
    _, targets = heldout(context, "held-out prior")
    return empirical_prior(targets, num_classes)


@POSTHOC.register("bbse")
def bbse_correction(logits: torch.Tensor, targets: torch.Tensor, context: PosthocContext) -> tuple[torch.Tensor, dict[str, Any]]:
    """BBSE estimate of the test prior from the held-out confusion matrix; logits + log q - log pi_source."""
    h_logits, h_targets = heldout(context, "bbse")
    c = logits.shape[1]
    confusion = cached(context, "confusion", lambda: joint_confusion(h_logits, h_targets, c))
    estimate = weights_to_prior(bbse_weights(confusion, predicted_distribution(logits, c).to(confusion.device)),
                                heldout_prior(context, c).to(confusion.device))
    return shift_by_prior(logits, estimate, context), estimate_columns(estimate, targets)


bbse_correction.caption = " with BBSE-estimated test prior"  # type: ignore[attr-defined]


@POSTHOC.register("rlls")
def rlls_correction(logits: torch.Tensor, targets: torch.Tensor, context: PosthocContext) -> tuple[torch.Tensor, dict[str, Any]]:
    """RLLS estimate (rho from the held-out size, alpha 0.01, delta 0.05); logits + log q - log pi_source."""
    h_logits, h_targets = heldout(context, "rlls")
    c = logits.shape[1]
    confusion = cached(context, "confusion", lambda: joint_confusion(h_logits, h_targets, c))
    rho = rlls_rho(c, len(h_targets))
    weights = rlls_weights(confusion, predicted_distribution(logits, c).to(confusion.device), rho)
    estimate = weights_to_prior(weights, heldout_prior(context, c).to(confusion.device))
    return shift_by_prior(logits, estimate, context), estimate_columns(estimate, targets)


rlls_correction.caption = " with RLLS-estimated test prior"  # type: ignore[attr-defined]


def calibrated_em(kind: str) -> Callable[..., tuple[torch.Tensor, dict[str, Any]]]:
    """MLLS (EM) on posteriors calibrated by ``kind`` on the held-out data; logits_cal + log q - log p_s."""

    def correction(logits: torch.Tensor, targets: torch.Tensor, context: PosthocContext) -> tuple[torch.Tensor, dict[str, Any]]:
        h_logits, h_targets = heldout(context, f"{kind}_em")
        params = cached(context, f"calibration:{kind}", lambda: fit_calibration(h_logits, h_targets, kind))
        calibrated = apply_calibration(logits, params)
        source = heldout_prior(context, logits.shape[1]).to(calibrated.device)
        estimate = em_prior(F.softmax(calibrated, dim=1), source)
        shift = torch.log(estimate.clamp_min(TINY)) - torch.log(source.clamp_min(TINY))
        return (calibrated + shift).to(logits.dtype), estimate_columns(estimate, targets)

    correction.__name__ = f"{kind}_em"
    correction.__doc__ = f"EM (MLLS) after {kind.upper()} calibration on held-out data; calibrated logits + log q - log p_s."
    correction.caption = f" with EM-estimated test prior after {kind.upper()} calibration"  # type: ignore[attr-defined]
    return correction


for _kind in ("ts", "vs", "bcts"):
    POSTHOC.register(f"{_kind}_em")(calibrated_em(_kind))


@POSTHOC.register("ts")
def temperature_scaling(logits: torch.Tensor, targets: torch.Tensor, context: PosthocContext) -> tuple[torch.Tensor, dict[str, Any]]:
    """Temperature scaling fitted on the held-out data (the accuracy is unchanged; calibration metrics change)."""
    h_logits, h_targets = heldout(context, "ts")
    params = cached(context, "calibration:ts", lambda: fit_calibration(h_logits, h_targets, "ts"))
    return apply_calibration(logits, params).to(logits.dtype), {"temperature": float(params["temperature"])}


temperature_scaling.caption = " with temperature scaling (held-out data)"  # type: ignore[attr-defined]
