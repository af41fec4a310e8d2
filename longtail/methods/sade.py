"""SADE (Zhang et al., NeurIPS 2022) as a plugin: test-time self-supervised aggregation, for any number of experts E
(docs/methods.md, SADE). Its training loss (``sade``) is in model/losses/sade.py.

On the unlabeled images of one test set, learn expert weights w = softmax(a) (a in R^E, initialised to 1/E, i.e.
the plain average) that maximise the cosine similarity between the aggregated predictions of two augmented views.
The network stays in eval mode and runs under no_grad: only ``a`` is optimised (SGD, up to ``epochs`` passes,
stopping early once a weight rounded to 2 decimals falls below ``stop_below``). The views come from the test
loader of the data set's kind: batch tensor ops for in-memory sets, per-image PIL transforms for image files.

Registered as the evaluation aggregation ``sade``: ``test_all_*.py --aggregation sade`` (or
``--test_time_aggregation``), settings in ``evaluation.test_time.sade``. SADE's streaming variant (its
test_training_imagenet_online.py) is ``--aggregation sade_online``: one shuffled pass, one SGD step per batch, and each
batch's images are predicted with the weights right after its own step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.data_loader.loader import BatchLoader
from longtail.registry import AGGREGATIONS
from longtail.core.hooks import procedure_settings
from longtail.evaluation.hooks import AggregationContext
from longtail.evaluation.report import ensemble_logits
from longtail.registry import register_cli_flag
from longtail.utils.device import autocast_context
from longtail.utils.errors import ConfigError
from longtail.utils.seed import Stream, torch_generator

# Defaults = SADE's CIFAR test-time config; override with evaluation.test_time.sade.<key> (e.g. --set on test_all_*.py).
TEST_TIME_DEFAULTS: dict[str, Any] = {
    "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True, "epochs": 5, "batch_size": 128,
    "stop_below": 0.05, "entropy_weight": 0.0, "augment": {"type": "sade_view", "args": {}},
    "online_batch_size": 64,  # the streaming variant's batch (SADE's online script)
}

ViewBatches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class AggregationResult:
    """Learned expert weights, the number of epochs run and the mean objective of each epoch."""

    weights: torch.Tensor
    epochs_run: int
    losses: list[float] = field(default_factory=list)


def aggregation_settings(config: dict[str, Any]) -> dict[str, Any]:
    """evaluation.test_time.sade merged over the defaults; unknown keys are errors."""
    return procedure_settings("sade", config.get("evaluation", {}))


def stability_loss(view1: torch.Tensor, view2: torch.Tensor, weights: torch.Tensor, entropy_weight: float = 0.0) -> torch.Tensor:
    """-mean_i cos(p(v1_i), p(v2_i)) with p = softmax of the aggregated logits (cosine eps 1e-6), minus
    ``entropy_weight`` * (H1 + H2) with H = -mean_{i,c} p log p (SADE's iNaturalist bonus, 0.01 there)."""
    p1 = F.softmax(ensemble_logits(view1, weights), dim=1)
    p2 = F.softmax(ensemble_logits(view2, weights), dim=1)
    loss = -F.cosine_similarity(p1, p2, dim=1, eps=1e-6).mean()
    if entropy_weight:
        loss = loss - entropy_weight * (-(p1 * p1.log()).mean() - (p2 * p2.log()).mean())
    return loss


class ExpertWeightLearner:
    """a in R^E (initialised to 1/E, so w = softmax(a) starts as the plain mean) and its SGD; a lives on the views'
    device, so a step never copies to or reads from the host."""

    def __init__(self, num_experts: int, device: torch.device, settings: dict[str, Any]) -> None:
        self.logits_a = torch.full((num_experts,), 1.0 / num_experts, device=device, requires_grad=True)
        self.optimizer = torch.optim.SGD([self.logits_a], lr=settings["lr"], momentum=settings["momentum"],
                                         weight_decay=settings["weight_decay"],
                                         nesterov=settings["nesterov"] and settings["momentum"] > 0)
        self.entropy_weight = float(settings["entropy_weight"])

    def step(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """One SGD step on the stability loss of one batch of view pairs; returns the (detached) loss."""
        loss = stability_loss(view1.float(), view2.float(), self.weights(grad=True), self.entropy_weight)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def weights(self, grad: bool = False) -> torch.Tensor:
        """The current expert weights w = softmax(a)."""
        return F.softmax(self.logits_a if grad else self.logits_a.detach(), dim=0)


def learn_expert_weights(view_batches: ViewBatches, num_experts: int, settings: dict[str, Any]) -> AggregationResult:
    """Optimise a in R^E by SGD on the stability loss over ``view_batches(epoch)``; returns w = softmax(a).
    The loss and the early-stopping test are read once per epoch."""
    learner: ExpertWeightLearner | None = None
    losses: list[float] = []
    epochs_run = 0
    for epoch in range(int(settings["epochs"])):
        total, count = None, 0
        for view1, view2 in view_batches(epoch):
            learner = learner or ExpertWeightLearner(num_experts, view1.device, settings)
            batch_loss = learner.step(view1, view2) * view1.shape[0]
            total, count = batch_loss if total is None else total + batch_loss, count + view1.shape[0]
        if learner is None:
            break  # no test images
        epochs_run = epoch + 1
        losses.append(float(total) / max(count, 1))
        if bool((torch.round(learner.weights(), decimals=2) < settings["stop_below"]).any()):
            break
    if learner is None:
        return AggregationResult(torch.full((num_experts,), 1.0 / num_experts), 0, losses)
    return AggregationResult(learner.weights(), epochs_run, losses)


def stream_expert_weights(view_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], num_experts: int,
                          settings: dict[str, Any]) -> torch.Tensor:
    """SADE's streaming variant: one pass, one SGD step per batch; returns (N, E) with each image's row the weights
    right after its own batch's step (the weights it is predicted with), in stream order."""
    learner: ExpertWeightLearner | None = None
    rows = []
    for view1, view2 in view_batches:
        learner = learner or ExpertWeightLearner(num_experts, view1.device, settings)
        learner.step(view1, view2)
        rows.append(learner.weights().expand(view1.shape[0], num_experts))
    return torch.cat(rows) if rows else torch.empty(0, num_experts)


def model_view_batches(model: nn.Module, loader: BatchLoader, idx: torch.Tensor, settings: dict[str, Any],
                       amp: str = "off", batch_size: int | None = None) -> ViewBatches:
    """Per epoch: shuffled batches of the test images ``idx`` (in ``loader.view_order(idx, epoch)``), two augmented
    views each -> per-expert logits (no_grad)."""
    image_size = loader.dataset.image_shape[-1]
    augment = loader.augments.build(settings["augment"], "evaluation.test_time.sade.augment", size=image_size)
    if augment is None:
        raise ConfigError("evaluation.test_time.sade.augment must be a real augmentation (e.g. 'sade_view'), not 'none'")
    device = loader.device
    batch_size = int(batch_size or settings["batch_size"])

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        model.eval()
        for view1, view2 in loader.view_pairs(idx, augment, epoch, batch_size):
            with torch.no_grad(), autocast_context(device, amp):
                logits = model(torch.cat([view1, view2]))["logits"].float()
            yield logits[:len(view1)], logits[len(view1):]

    return batches


def learn_weights_on_images(model: nn.Module, loader: BatchLoader, idx: torch.Tensor, config: dict[str, Any],
                            settings: dict[str, Any] | None = None) -> AggregationResult:
    """Learn aggregation weights on the test images ``idx`` served by ``loader`` (settings: evaluation.test_time.sade
    of ``config`` unless given)."""
    settings = settings or aggregation_settings(config)
    batches = model_view_batches(model, loader, idx, settings, config["trainer"].get("amp", "off"))
    return learn_expert_weights(batches, int(getattr(model, "num_experts", 1)), settings)


def collect_view_logits(model: nn.Module, loader: BatchLoader, settings: dict[str, Any], amp: str = "off") -> torch.Tensor:
    """Per-expert logits of ``settings['epochs']`` pairs of augmented views of every test image, (V, 2, N, E, C)
    in test-set order (pair v is test-time epoch v's augmentation), so the aggregation can run without the model
    from a file of saved logits (evaluation/saved_logits.py)."""
    everything = torch.arange(len(loader.dataset))
    batches = model_view_batches(model, loader, everything, settings, amp)
    pairs = []
    for epoch in range(int(settings["epochs"])):
        order = loader.view_order(everything, epoch)
        first, second = zip(*batches(epoch))
        pair = torch.empty((2, len(everything), *first[0].shape[1:]), dtype=first[0].dtype, device=first[0].device)
        pair[0, order.to(pair.device)], pair[1, order.to(pair.device)] = torch.cat(first), torch.cat(second)
        pairs.append(pair)
    return torch.stack(pairs)


def saved_view_order(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """The images ``idx`` in the seeded shuffled order of test-time epoch ``epoch`` on saved views (the same order
    for every checkpoint)."""
    return idx[torch.randperm(len(idx), generator=torch_generator("cpu", 0, epoch, Stream.TEST_TIME_ORDER)).to(idx.device)]


def saved_view_batches(view_logits: torch.Tensor, idx: torch.Tensor, batch_size: int) -> ViewBatches:
    """Per epoch: the images ``idx`` in saved_view_order, in batches, with the saved logits of view pair
    ``epoch % V``. (learn_weights_from_views runs the same batches for many test sets at once.)"""
    idx = idx.to(view_logits.device)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pair = view_logits[epoch % view_logits.shape[0]]
        order = saved_view_order(idx, epoch)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield pair[0, rows].float(), pair[1, rows].float()

    return batches


def _masked_probs(views: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """softmax over classes of sum_k w_k z_k for padded batches: views (L, B, E, C), weights (L, E) -> (L, B, C)."""
    return F.softmax(torch.einsum("lbec,le->lbc", views, weights), dim=2)


def batched_stability_loss(view1: torch.Tensor, view2: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor,
                           entropy_weight: float) -> torch.Tensor:
    """(L,) stability_loss of L test sets' padded batches at once (rows where ``mask`` is False are padding)."""
    p1, p2 = _masked_probs(view1, weights), _masked_probs(view2, weights)
    valid = mask.to(p1.dtype)
    rows = valid.sum(dim=1)
    loss = -(F.cosine_similarity(p1, p2, dim=2, eps=1e-6) * valid).sum(dim=1) / rows
    if entropy_weight:
        cells = rows * p1.shape[2]
        h1 = -((p1 * p1.log()).sum(dim=2) * valid).sum(dim=1) / cells
        h2 = -((p2 * p2.log()).sum(dim=2) * valid).sum(dim=1) / cells
        loss = loss - entropy_weight * (h1 + h2)
    return loss


def learn_weights_from_views(view_logits: torch.Tensor, subsets: list[torch.Tensor], settings: dict[str, Any],
                             max_cells: int = 2**24) -> list[AggregationResult]:
    """learn_expert_weights on saved_view_batches for every subset, run for all subsets at once: step t of every
    test set that still has a batch t (and has not stopped) is one padded batched computation, followed by SGD's
    update (weight decay, momentum with the first buffer = the gradient, Nesterov) written out per test set, so the
    result is that of running each test set alone (tested), at a fraction of the per-step overhead."""
    num, experts = len(subsets), view_logits.shape[3]
    batch, momentum, nesterov = int(settings["batch_size"]), float(settings["momentum"]), bool(settings["nesterov"])
    lr, decay, entropy = float(settings["lr"]), float(settings["weight_decay"]), float(settings["entropy_weight"])
    a = torch.full((num, experts), 1.0 / experts, device=view_logits.device)
    buffer, started = torch.zeros_like(a), torch.zeros(num, dtype=torch.bool, device=a.device)
    active, epochs_run = [len(idx) > 0 for idx in subsets], [0] * num
    losses: list[list[float]] = [[] for _ in range(num)]
    chunk = max(1, max_cells // max(1, batch * experts * view_logits.shape[4]))
    for epoch in range(int(settings["epochs"])):
        pair = view_logits[epoch % view_logits.shape[0]]
        orders = [saved_view_order(idx.to(a.device), epoch) for idx in subsets]
        totals = torch.zeros(num, dtype=torch.float64, device=a.device)
        steps = max([math.ceil(len(o) / batch) for o, on in zip(orders, active) if on] or [0])
        width = max([math.ceil(len(o) / batch) for o in orders] or [1]) * batch
        padded = torch.full((num, max(width, batch)), -1, dtype=torch.long, device=a.device)
        for p, order in enumerate(orders):  # every test set's epoch order, padded with -1
            padded[p, :len(order)] = order
        for step in range(steps):
            live = [p for p in range(num) if active[p] and step * batch < len(orders[p])]
            for start in range(0, len(live), chunk):
                part = live[start:start + chunk]
                rows = padded[part, step * batch:(step + 1) * batch]
                mask = rows >= 0
                view1, view2 = pair[0, rows.clamp_min(0)].float(), pair[1, rows.clamp_min(0)].float()
                index = torch.tensor(part, device=a.device)
                params = a[index].clone().requires_grad_(True)
                loss = batched_stability_loss(view1, view2, mask, F.softmax(params, dim=1), entropy)
                (grad,) = torch.autograd.grad(loss.sum(), params)
                d = grad + decay * a[index]
                if momentum:
                    fresh = ~started[index]
                    buf = torch.where(fresh[:, None], d, momentum * buffer[index] + d)
                    buffer[index], started[index] = buf, True
                    d = d + momentum * buf if nesterov else buf
                a[index] = a[index] - lr * d
                totals[index] += loss.detach().double() * mask.sum(dim=1).double()
        for p in range(num):
            if active[p]:
                epochs_run[p] = epoch + 1
                losses[p].append(float(totals[p]) / max(len(orders[p]), 1))
                if bool((torch.round(F.softmax(a[p], dim=0), decimals=2) < settings["stop_below"]).any()):
                    active[p] = False
    return [AggregationResult(F.softmax(a[p], dim=0) if len(subsets[p]) else torch.full((experts,), 1.0 / experts),
                              epochs_run[p], losses[p]) for p in range(num)]


@AGGREGATIONS.register("sade")
def sade_aggregation(context: AggregationContext) -> dict[str, torch.Tensor]:
    """Expert weights learned on each test prior's unlabeled images (printed per prior). The views are new
    augmentations of the images, so this procedure runs the model itself rather than reusing the collected logits;
    from saved view logits (``context.view_logits``) it learns on those instead."""
    run, data, weights = context.run, context.data, {}
    quiet = bool(getattr(run, "quiet", False))
    from_views = (dict(zip(context.subsets, learn_weights_from_views(context.view_logits, list(context.subsets.values()),
                                                                     context.settings)))
                  if context.view_logits is not None else {})
    for prior, idx in context.subsets.items():
        if context.view_logits is not None:
            result = from_views[prior]
        else:
            result = learn_weights_on_images(run.model, data.test_loader, idx, run.config, context.settings)
        weights[prior] = result.weights
        if not quiet:
            print(f"{run.label} {prior}: expert weights {', '.join(f'{w:.3f}' for w in result.weights.tolist())} "
                  f"after {result.epochs_run} epoch(s)")
    return weights


sade_aggregation.collect_views = collect_view_logits  # type: ignore[attr-defined]


@AGGREGATIONS.register("sade_online")
def sade_online_aggregation(context: AggregationContext) -> dict[str, torch.Tensor]:
    """SADE's streaming variant: per test prior, (N, E) weights, each image's row learned from the batches up to and
    including its own (batch ``evaluation.test_time.sade.online_batch_size``); rows in the order of the prior's
    indices."""
    run, settings = context.run, context.settings
    loader, num_experts = context.data.test_loader, int(getattr(run.model, "num_experts", 1))
    weights = {}
    for prior, idx in context.subsets.items():
        batches = model_view_batches(run.model, loader, idx, settings, run.config["trainer"].get("amp", "off"),
                                     int(settings["online_batch_size"]))
        stream = stream_expert_weights(batches(0), num_experts, settings)
        idx = idx.cpu()
        position = torch.empty(int(idx.max()) + 1 if len(idx) else 0, dtype=torch.long)
        position[idx] = torch.arange(len(idx))  # dataset index -> row of this prior's subset
        per_image = torch.empty_like(stream)
        per_image[position[loader.view_order(idx, 0).cpu()].to(stream.device)] = stream
        weights[prior] = per_image
        final = stream[-1].tolist() if len(stream) else []
        print(f"{run.label} {prior}: final expert weights {', '.join(f'{w:.3f}' for w in final)} "
              f"after one online pass of {len(idx)} images")
    return weights


def _use_sade(args: Any, value: Any) -> list:
    """--test_time_aggregation is --aggregation sade."""
    args.aggregation = "sade"
    return []


sade_aggregation.defaults = TEST_TIME_DEFAULTS  # type: ignore[attr-defined]
sade_online_aggregation.defaults = TEST_TIME_DEFAULTS  # type: ignore[attr-defined]
sade_online_aggregation.settings_key = "sade"  # type: ignore[attr-defined]  (one settings block for both variants)

register_cli_flag(["--test_time_aggregation"], ("test_all",), _use_sade, action="store_true",
                  help="SADE test-time self-supervised aggregation (= --aggregation sade): learn expert weights per "
                       "test prior on its unlabeled images (settings: evaluation.test_time.sade.*) and evaluate with them")
