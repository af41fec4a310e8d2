"""Loader for image-file data sets: a persistent torch DataLoader decodes and transforms images in worker processes.

Same interface as ``BatchLoader`` (``batches(epoch, start_step)``, ``len``, rank sharding). The epoch
order is the same seeded permutation; every sample's augmentation is seeded from (seed, epoch, position in the
global epoch order), so a batch is a pure function of (seed, epoch, step) regardless of worker count, and a DDP run
augments each image exactly as a single-process run over the same global batch. Resuming mid-epoch is exact.
Limits: bit-exactness also needs the same PIL/torchvision versions (resampling code) on resume.
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.functional import pil_to_tensor

from longtail.data_loader.device_decode import DECODE_MODES, DevicePlan, decode_batch, device_plan, keep_list, read_encoded
from longtail.data_loader.image_lists import ImageListDataset
from longtail.data_loader.image_transforms import ImageTransform, eval_transform
from longtail.registry import IMAGE_AUGMENTS
from longtail.data_loader.loader import BatchLoader
from longtail.data_loader.multiview import MultiViewTransform, num_views, stack_views
from longtail.registry import LOADERS
from longtail.utils.errors import ConfigError
from longtail.utils.seed import Stream, derive_seed
from longtail.utils.signals import ignore_stop_signals

SampleKey = tuple[int, int, int]  # (index in the data set, epoch, position in the global epoch order)


def as_tensor(image: Any) -> torch.Tensor:
    """A transformed PIL image as uint8 CHW, or its views (training multi_view or test-time views) as (k, C, H, W)."""
    return torch.stack([pil_to_tensor(v) for v in image]) if isinstance(image, (list, tuple)) else pil_to_tensor(image)


class SampleReader(Dataset):
    """Worker side: decode one image, apply the transform under a per-sample seed, return (uint8 CHW, label)."""

    def __init__(self, dataset: ImageListDataset, transform: ImageTransform, seed: int) -> None:
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int]:
        index, epoch, position = key
        image = self.dataset.load_image(index)
        with torch.random.fork_rng(devices=[]):  # never disturb the caller's global generator (num_workers=0)
            torch.manual_seed(derive_seed(self.seed, epoch, position, Stream.AUGMENT))
            image = self.transform(image)
        return as_tensor(image), int(self.dataset.targets[index])


class EncodedReader(Dataset):
    """Worker side of ``decode: device``: the file's bytes (JPEG) and the sample's augmentation parameters, drawn
    under the same per-sample seed as SampleReader's transform."""

    def __init__(self, dataset: ImageListDataset, plan: DevicePlan, seed: int) -> None:
        self.dataset, self.plan, self.seed = dataset, plan, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, bool, list[float], int]:
        index, epoch, position = key
        try:
            data, encoded, (width, height) = read_encoded(self.dataset.read_bytes(index))
        except OSError:
            self.dataset.load_image(index)  # raises the data set's error naming the file and its list
            raise
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, epoch, position, Stream.AUGMENT))
            params = self.plan.draw(width, height)
        return data, encoded, params, int(self.dataset.targets[index])


class TwoViewReader(SampleReader):
    """Worker side of SADE's test-time views: decode one image once, return two independently augmented copies."""

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        index, epoch, position = key
        image = self.dataset.load_image(index)
        views = []
        for tag in (Stream.VIEW1, Stream.VIEW2):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.seed, epoch, position, tag))
                views.append(pil_to_tensor(self.transform(image)))
        return views[0], views[1]


class EpochBatchSampler(Sampler):
    """Main-process side: yields the sample keys of one epoch's batches from ``start_step`` on.

    It holds plain data only (no reference back to the loader), so dropping a loader frees its workers at once.
    """

    def __init__(self, batch_size: int, rank: int, world_size: int) -> None:
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.order: list[int] = []
        self.epoch = self.start_step = self.steps = 0

    def configure(self, order: list[int], epoch: int, start_step: int, steps: int) -> None:
        """Select this rank's epoch order and the steps to serve next."""
        self.order, self.epoch, self.start_step, self.steps = order, epoch, start_step, steps

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[list[SampleKey]]:
        order, epoch, b, rank, world = self.order, self.epoch, self.batch_size, self.rank, self.world_size
        for step in range(self.start_step, self.steps):
            first = step * b  # position j of this rank's order is position j * world + rank of the global order
            yield [(idx, epoch, (first + j) * world + rank) for j, idx in enumerate(order[first:first + b])]


def seed_worker(worker_id: int) -> None:
    """Seed Python and NumPy in a worker from torch's per-worker seed (for third-party transforms); stop signals are
    the main process's to handle."""
    ignore_stop_signals()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


@LOADERS.register("image_list")
class ImageListLoader(BatchLoader):
    """Batches of decoded, transformed images: uint8 from the workers, normalised on ``device``."""

    augments = IMAGE_AUGMENTS
    default_augment = "imagenet"

    def __init__(self, dataset: ImageListDataset, batch_size: int, sampler: str = "random",
                 augment: ImageTransform | None = None, seed: int = 0, drop_last: bool = False,
                 channels_last: bool = False, limit_batches: int | None = None, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, device: torch.device | str = "cpu", decode: str = "pil", views: Any = None) -> None:
        super().__init__(dataset, batch_size, sampler, None, seed, drop_last, channels_last, limit_batches, rank,
                         world_size)  # type: ignore[arg-type]
        if decode not in DECODE_MODES:
            raise ConfigError(f"data_loader.args.decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        if views is not None and (augment is not None or decode == "device"):
            raise ConfigError("evaluation.views other than 'center' need the PIL test path (data_loader.args.decode 'pil')")
        test_transform = eval_transform(dataset.resize_size, dataset.image_size, dataset.interpolation)
        self.transform = augment or (views.pil(dataset) if views is not None else test_transform)
        if isinstance(self.transform, MultiViewTransform):  # "none" views are the test transform
            self.transform.fallback = test_transform
        # decode "device": workers read bytes and draw parameters; JPEGs are decoded and transformed on ``device``
        self.plan = device_plan(augment, dataset.resize_size, dataset.image_size, dataset.interpolation) \
            if decode == "device" else None
        self.num_workers, self._device = num_workers, torch.device(device)
        self.batch_sampler = EpochBatchSampler(batch_size, rank, world_size)
        self._torch_loader: DataLoader | None = None

    @property
    def device(self) -> torch.device:
        """Device the normalised batches are produced on."""
        return self._device

    @property
    def train_views(self) -> int:
        """Augmented copies of every image in a training batch (a ``multi_view`` transform makes k > 1)."""
        return num_views(self.transform)

    def torch_loader(self) -> DataLoader:
        """The persistent DataLoader (workers survive between epochs; seeded; pinned memory on CUDA)."""
        if self._torch_loader is None:
            workers = self.num_workers
            reader: Dataset = (SampleReader(self.dataset, self.transform, self.seed) if self.plan is None
                               else EncodedReader(self.dataset, self.plan, self.seed))
            self._torch_loader = DataLoader(
                reader, batch_sampler=self.batch_sampler, collate_fn=None if self.plan is None else keep_list,
                num_workers=workers, pin_memory=self.device.type == "cuda" and self.plan is None,
                persistent_workers=workers > 0, worker_init_fn=seed_worker if workers > 0 else None,
                generator=torch.Generator().manual_seed(self.seed))
        return self._torch_loader

    def view_pairs(self, idx: torch.Tensor, augment: ImageTransform, epoch: int, batch_size: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Shuffled batches of the images ``idx``, as two independently augmented, normalised views (SADE test time)."""
        order = self.view_order(idx, epoch).tolist()
        keys = [[(i, epoch, start + j) for j, i in enumerate(order[start:start + batch_size])]
                for start in range(0, len(order), batch_size)]
        workers = self.num_workers
        loader = DataLoader(TwoViewReader(self.dataset, augment, self.seed), batch_sampler=keys, num_workers=workers,
                            pin_memory=self.device.type == "cuda", worker_init_fn=seed_worker if workers > 0 else None)
        for view1, view2 in loader:
            yield tuple(self.dataset.model_input(v.to(self.device, non_blocking=True), self.channels_last)  # type: ignore[misc]
                        for v in (view1, view2))

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (normalised float images, targets) of ``epoch`` from batch ``start_step`` on."""
        self.batch_sampler.configure(self.epoch_order(epoch).tolist(), epoch, start_step, len(self))
        for batch in self.torch_loader():
            if self.plan is None:
                images, targets = batch
                images = images.to(self.device, non_blocking=True)
            else:
                images = decode_batch([(data, encoded) for data, encoded, _, _ in batch], self.plan,
                                      [params for _, _, params, _ in batch], self.device)
                targets = torch.tensor([target for *_, target in batch])
            if images.dim() == 5 and self.train_views > 1:  # (B, k, C, H, W): k training views, stacked view by view
                images, targets = stack_views(images, targets)
            elif images.dim() == 5:  # test-time views (evaluation.views): the views of an image consecutive
                images = images.flatten(0, 1)
            yield (self.dataset.model_input(images, self.channels_last), targets.to(self.device, non_blocking=True))
