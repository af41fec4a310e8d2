"""Samplers and the in-memory batch loader: index batches -> on-device uint8 gather -> batch augmentation -> float."""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch

from longtail.data_loader.augment import BatchAugment
from longtail.registry import AUGMENTS
from longtail.data_loader.datasets import ImageTensorDataset
from longtail.data_loader.multiview import num_views
from longtail.registry import SAMPLERS, LOADERS
from longtail.utils.seed import Stream, torch_generator



@SAMPLERS.register("random")
def random_order(targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A fresh random permutation of all indices every epoch (the reference default, shuffle=true)."""
    return torch.randperm(len(targets), generator=gen)


@SAMPLERS.register("sequential")
def sequential_order(targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Indices in data set order (evaluation)."""
    return torch.arange(len(targets))


@SAMPLERS.register("class_balanced")
def class_balanced_order(targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """N draws: a uniformly random class, then the next image of that class's shuffled list (cycled when exhausted)."""
    targets = targets.cpu()
    num_classes = int(targets.max()) + 1 if len(targets) else 0
    present = torch.unique(targets)
    draws = present[torch.randint(0, len(present), (len(targets),), generator=gen)]
    order = torch.empty(len(targets), dtype=torch.long)
    for cls in range(num_classes):
        slots = torch.nonzero(draws == cls).flatten()
        if not len(slots):
            continue
        members = torch.nonzero(targets == cls).flatten()
        rounds = math.ceil(len(slots) / len(members))
        cycle = torch.cat([members[torch.randperm(len(members), generator=gen)] for _ in range(rounds)])
        order[slots] = cycle[: len(slots)]
    return order


@LOADERS.register("tensor")
class BatchLoader:
    """Iterates a tensor data set in batches; every random draw is seeded from (seed, epoch, step).

    Resuming mid-epoch is exact: ``batches(epoch, start_step=k)`` reproduces the rest of epoch ``epoch``.
    In distributed runs each rank takes every ``world_size``-th index of the (padded) epoch order, and its
    augmentation stream also depends on the rank.
    """

    augments = AUGMENTS  # registry of the ``augment`` config block for this loader kind
    default_augment = "standard"

    def __init__(self, dataset: ImageTensorDataset, batch_size: int, sampler: str = "random",
                 augment: BatchAugment | None = None, seed: int = 0, drop_last: bool = False,
                 channels_last: bool = False, limit_batches: int | None = None, rank: int = 0, world_size: int = 1,
                 views: Any = None) -> None:
        self.dataset, self.batch_size, self.augment, self.seed = dataset, batch_size, augment, seed
        self.views = views  # test-time views (data_loader/test_views.py): several images per sample
        self.order_fn = SAMPLERS.get(sampler, where="data_loader.args.sampler")
        self.sampler, self.drop_last, self.channels_last = sampler, drop_last, channels_last
        self.limit_batches, self.rank, self.world_size = limit_batches, rank, world_size

    @property
    def device(self) -> torch.device:
        """Device the batches are produced on."""
        return self.dataset.images.device

    @property
    def train_views(self) -> int:
        """Augmented copies of every image in a training batch (a ``multi_view`` augmentation makes k > 1)."""
        return num_views(self.augment)

    @property
    def samples_per_rank(self) -> int:
        """Number of samples this rank sees per epoch (before limit_batches)."""
        return math.ceil(len(self.dataset) / self.world_size)

    def __len__(self) -> int:
        n = self.samples_per_rank
        steps = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return min(steps, self.limit_batches) if self.limit_batches else steps

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's index order for ``epoch`` (padded by wrap-around so every rank gets the same count)."""
        order = self.order_fn(self.dataset.targets, torch_generator("cpu", self.seed, epoch, Stream.ORDER))
        if self.world_size > 1:
            total = self.samples_per_rank * self.world_size
            order = torch.cat([order, order[: total - len(order)]])[self.rank::self.world_size]
        return order

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (normalised float images, targets) of ``epoch`` from batch ``start_step`` on."""
        device = self.device
        order = self.epoch_order(epoch).to(device)  # one copy per epoch; batches are device slices of it
        rank_key = (self.rank,) if self.world_size > 1 else ()  # ranks must not share crop/flip draws
        for step in range(start_step, len(self)):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            images, targets = self.dataset.images[idx], self.dataset.targets[idx]
            if self.augment is not None:
                images = self.augment(images, torch_generator(device, self.seed, epoch, step, Stream.AUGMENT, *rank_key))
            if self.train_views > 1:  # k views of every image, stacked view by view: the targets follow (multiview.py)
                targets = targets.repeat(self.train_views)
            yield self.dataset.model_input(images, self.channels_last, train=self.augment is not None,
                                           views=self.views), targets

    def view_order(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """The images ``idx`` in the seeded shuffled order of test-time epoch ``epoch``."""
        return idx[torch.randperm(len(idx), generator=torch_generator("cpu", self.seed, epoch, Stream.VIEW_ORDER))]

    def view_pairs(self, idx: torch.Tensor, augment: BatchAugment, epoch: int, batch_size: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches of the images ``idx``, as two independently augmented, normalised views (SADE test time)."""
        device = self.device
        order = self.view_order(idx, epoch).to(device)  # one copy per epoch, as in batches()
        for step, start in enumerate(range(0, len(order), batch_size)):
            batch = self.dataset.images[order[start:start + batch_size]]
            views = [augment(batch, torch_generator(device, self.seed, epoch, step, tag)) for tag in (Stream.VIEW1, Stream.VIEW2)]
            yield tuple(self.dataset.model_input(v, self.channels_last, train=True) for v in views)  # type: ignore[misc]
