"""DirMixE (Yang et al., ICML 2024, "Harnessing Hierarchical Label Distribution Variations in Test Agnostic
Long-tail Recognition"; code scongl/DirMixE, built on SADE's) as a plugin: the ``dirmixe`` training loss
(docs/methods.md, DirMixE). Its test-time procedure is SADE's self-supervised aggregation (``--aggregation sade``,
settings ``evaluation.test_time.sade``), which the official test scripts reuse unchanged.

Three experts, each tied to a Dirichlet meta-distribution of test label distributions centred at the training
prior (forward), the uniform prior and the inverse prior (backward): Dir(alpha_sum * centre_k). A pool of
``trials x pool_batches`` draws (k uniform over the experts, w ~ Dir(alpha_sum * centre_k)) is drawn once per run;
every epoch walks through it in a new order, ``trials`` draws per step. For draw t the loss is the cross-entropy of
expert k_t with the logit adjustment for w_t,

    L_t = CE(z_{k_t} - log((w_t / pi) ** power + 1e-9), y),

and the step's loss is mean_t L_t, plus ``lambda_var`` times the semi-variance of the L_t above their mean,
sum_{t: L_t > m} (L_t - m)^2 / max(#{t: L_t > m} - 1, 1), in the epochs after ``variance_start`` of training
(the reference: epochs e > int(0.8 * (E + 1)), 1-based).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from longtail.data_loader.datasets import dataset_info
from longtail.model.losses.base import ExpertLoss, LossOutput, at_least_fp32, training_prior
from longtail.model.losses.sade import inverse_prior
from longtail.registry import LOSSES
from longtail.utils.errors import ConfigError
from longtail.utils.seed import Stream, numpy_generator

DIRMIXE_NUM_EXPERTS = 3


def dirichlet_centres(cls_num_list: Sequence[int]) -> torch.Tensor:
    """(3, C) float64 centres of the experts' meta-distributions: training prior, uniform, inverse prior."""
    prior = training_prior(cls_num_list)
    return torch.stack([prior, torch.full_like(prior, 1.0 / len(prior)), inverse_prior(prior)])


def draw_pool(centres: torch.Tensor, size: int, alpha_sum: float, rng: np.random.Generator,
              chunk: int = 4096) -> tuple[np.ndarray, list[np.ndarray]]:
    """``size`` draws (expert k uniform over the centres, w ~ Dir(alpha_sum * centre_k)): k (size,) and the w in
    chunks of ``chunk`` rows (so that a large pool, e.g. ImageNet-LT's 60 x 1811 draws of 1000 classes, is never
    held in float64 at once)."""
    experts = rng.integers(0, centres.shape[0], size=size)
    alphas = centres.numpy() * alpha_sum
    chunks = [np.stack([rng.dirichlet(alphas[k]) for k in experts[start:start + chunk]])
              for start in range(0, size, chunk)]
    return experts, chunks


def log_adjustment(draws: torch.Tensor, prior: torch.Tensor, power: float) -> torch.Tensor:
    """log((w / pi) ** power + 1e-9) in float64, returned as float32 (the reference's score shift)."""
    return torch.log((draws.double() / prior.double()) ** power + 1e-9).float()


def semi_variance(losses: torch.Tensor) -> torch.Tensor:
    """sum over L_t > mean of (L_t - mean)^2, divided by max(count - 1, 1) (the reference's regulariser)."""
    mean = losses.mean()
    above = (losses > mean).to(losses.dtype)
    return (((losses - mean) ** 2) * above).sum() / (above.sum() - 1).clamp_min(1)


class DirMixELoss(ExpertLoss):
    """Mean over sampled target priors of the logit-adjusted CE of their expert, plus the semi-variance regulariser.

    The pool (expert index and log adjustment log((w / pi) ** power + 1e-9) of every draw) lives in non-persistent
    buffers: it is a pure function of the seed, so checkpoints stay small and a resumed run redraws the same pool.
    """

    def __init__(self, cls_num_list: Sequence[int], trials: int, pool_batches: int, power: float, lambda_var: float,
                 alpha_sum: float, regularise_from_epoch: int, seed: int) -> None:
        super().__init__()
        prior = training_prior(cls_num_list)
        experts, chunks = draw_pool(dirichlet_centres(cls_num_list), trials * pool_batches, alpha_sum,
                                    numpy_generator(seed, Stream.LOSS_DRAWS))
        adjustment = torch.cat([log_adjustment(torch.from_numpy(c), prior, power) for c in chunks]) if chunks else \
            torch.zeros(0, len(cls_num_list))
        self.install(torch.from_numpy(experts), adjustment)
        self.trials, self.seed, self.lambda_var = int(trials), int(seed), float(lambda_var)
        self.regularise_from_epoch, self.regularise = int(regularise_from_epoch), False

    def set_pool(self, experts: torch.Tensor, draws: torch.Tensor, prior: torch.Tensor, power: float) -> None:
        """Install a pool of (expert, target prior w) draws, in this order (parity tests pass the reference's)."""
        self.install(experts, log_adjustment(draws, prior, power))

    def install(self, experts: torch.Tensor, adjustment: torch.Tensor) -> None:
        """The pool as non-persistent buffers: expert indices, score shifts, the epoch's order and the position."""
        self.register_buffer("pool_experts", experts.long(), persistent=False)
        self.register_buffer("pool_adjustment", adjustment.float(), persistent=False)
        self.register_buffer("order", torch.arange(len(experts)), persistent=False)
        self.register_buffer("position", torch.zeros((), dtype=torch.long), persistent=False)

    def on_epoch_start(self, epoch: int) -> None:
        """New order of the pool (seeded by the epoch), restart at its beginning; regulariser on after its epoch."""
        size = len(self.pool_experts)
        order = numpy_generator(self.seed, epoch, Stream.LOSS_ORDER).permutation(size)
        self.order = torch.from_numpy(order).to(self.pool_experts.device)
        self.position.zero_()
        self.regularise = epoch > self.regularise_from_epoch

    def trial_losses(self, logits: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(T,) batch-mean CE of expert k_t on z_{k_t} - adjustment_t for the pool rows ``rows``."""
        scores = at_least_fp32(logits)[:, self.pool_experts[rows], :] - self.pool_adjustment[rows][None]
        b, t, c = scores.shape
        per_sample = F.cross_entropy(scores.reshape(b * t, c), target.repeat_interleave(t), reduction="none")
        return per_sample.view(b, t).mean(dim=0)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """mean_t L_t, plus lambda_var * semi-variance once the regulariser is on."""
        total = losses.mean()
        return total + self.lambda_var * semi_variance(losses) if self.regularise else total

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> LossOutput:
        if logits.dim() != 3 or logits.shape[1] != DIRMIXE_NUM_EXPERTS:
            raise ValueError(f"the 'dirmixe' loss needs per-expert logits of shape (B, 3, C), got {tuple(logits.shape)}; "
                             "set arch.args.num_experts=3")
        size = len(self.pool_experts)
        slots = (self.position * self.trials + torch.arange(self.trials, device=self.position.device)) % size
        rows = self.order[slots]
        self.position += 1
        losses = self.trial_losses(logits, target, rows)
        experts = self.pool_experts[rows]
        counts = torch.bincount(experts, minlength=DIRMIXE_NUM_EXPERTS).to(losses.dtype)
        per_expert = torch.zeros(DIRMIXE_NUM_EXPERTS, dtype=losses.dtype, device=losses.device)
        per_expert = per_expert.index_add(0, experts, losses.detach()) / counts.clamp_min(1)
        return LossOutput(self.combine(losses), per_expert)


@LOSSES.register("dirmixe")
def dirmixe_loss(cls_num_list: list[int], num_experts: int, trials: int = 60, pool_batches: int = 100,
                 power: float = 1.0, lambda_var: float = 1.0, alpha_sum: float = 10000.0, variance_start: float = 0.8,
                 regularise_from_epoch: int = 0, seed: int = 0) -> DirMixELoss:
    """DirMixE: experts for Dirichlet meta-distributions (forward / uniform / backward) of target label distributions,
    trained on ``trials`` sampled target priors per step, with the semi-variance regulariser late in training.
    ``pool_batches``, ``regularise_from_epoch`` and ``seed`` are derived when the config is resolved."""
    if num_experts != DIRMIXE_NUM_EXPERTS:
        raise ConfigError(f"loss 'dirmixe' has exactly 3 experts (forward, uniform, backward) but the model has "
                          f"{num_experts}; set arch.args.num_experts=3")
    if trials < 1 or pool_batches < 1 or alpha_sum <= 0 or power <= 0:
        raise ConfigError("loss.args: dirmixe needs trials >= 1, pool_batches >= 1, alpha_sum > 0 and power > 0")
    return DirMixELoss(cls_num_list, trials, pool_batches, power, lambda_var, alpha_sum, regularise_from_epoch, seed)


def batches_per_epoch(config: dict[str, Any]) -> int | None:
    """ceil(training images / batch size) from the data set's registered facts (None when they are unknown)."""
    block = config.get("data_loader", {})
    args = dict(block.get("args") or {})
    batch_size = args.get("batch_size", 128)
    try:
        counts = dataset_info(block.get("type"), args).get("cls_num_list")
    except Exception:  # noqa: BLE001  a data set without shape facts: the configured pool size stays
        return None
    if not isinstance(counts, list) or not counts or not isinstance(batch_size, int) or batch_size < 1:
        return None
    return max(1, math.ceil(sum(counts) / batch_size))


def resolve_dirmixe_block(block: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Derive the pool size (one pool entry per trial and batch of an epoch, as the reference), the first epoch of
    the regulariser (int(variance_start * (epochs + 1)), 1-based, as the reference) and the pool's seed (the run's)."""
    args = dict(block["args"])
    fraction = args.get("variance_start", 0.8)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError(f"loss.args.variance_start must be a fraction of training in [0, 1], got {fraction!r}")
    epochs = int(config.get("trainer", {}).get("epochs", 1))
    args["regularise_from_epoch"] = int(fraction * (epochs + 1))
    args["seed"] = int(config.get("seed", 0))
    batches = batches_per_epoch(config)
    if "pool_batches" not in args and batches is not None:
        args["pool_batches"] = batches
    return {**block, "args": args}


dirmixe_loss.resolve_block = resolve_dirmixe_block  # type: ignore[attr-defined]
