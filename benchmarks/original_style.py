"""Original-repo-style training loop, used only as the same-machine reference of ``tools.benchmark --compare``.

The original BalPoE / RIDE code trains CIFAR with per-image PIL transforms in DataLoader workers (4 for CIFAR),
NCHW tensors, one module per expert run in a Python loop, and host syncs every step (``loss.item()``, metrics on
the CPU). This module reproduces that execution pattern with this package's model, loss, optimizer and mixup, so the
arithmetic is the same and the measured difference is what the fast path buys. It is not a training entry point.
"""
from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from PIL import Image

from longtail.data_loader.datasets import ImageTensorDataset
from longtail.data_loader.factory import DataBundle, build_augment, split_loader_args
from longtail.core.build import build_combiner
from longtail.trainer.trainer import Trainer

ORIGINAL_CIFAR_WORKERS = 4  # num_workers 4 for CIFAR in the reference configs


class PilImageDataset(Dataset):
    """(PIL image -> torchvision transforms, label) per item, as torchvision's CIFAR data sets serve them."""

    def __init__(self, data: ImageTensorDataset, transform: transforms.Compose) -> None:
        self.images = data.images.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # HWC uint8, as in CIFAR's pickles
        self.targets = data.targets.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(pil), self.targets[index]


def pil_transform(config: dict[str, Any], data: ImageTensorDataset) -> transforms.Compose:
    """Per-image torchvision transforms doing what the configured batch augmentation does (crop, flip, rotation,
    AutoAugment), read from the built augmentation so defaults have one source."""
    _, loader_args = split_loader_args(config["data_loader"])
    augment = build_augment(data.loader_kind, loader_args, data.image_shape[-1])
    steps: list[Any] = []
    if augment is not None:
        steps.append(transforms.RandomCrop(data.image_shape[-1], padding=augment.padding))
        if augment.flip:
            steps.append(transforms.RandomHorizontalFlip())
        if augment.rotation:
            steps.append(transforms.RandomRotation(augment.rotation))
        if augment.autoaugment:
            steps.append(transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10))
    steps += [transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]
    return transforms.Compose(steps)


def original_style_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every speed switch at the original code's setting (NCHW, looped experts, eager, fp32)."""
    plain = copy.deepcopy(config)
    plain["trainer"].update(channels_last=False, compile=False, amp="off")
    plain["arch"].setdefault("args", {})["batched_experts"] = False
    return plain


def original_style_rate(config: dict[str, Any], data: DataBundle, device: torch.device, steps: int, warmup: int,
                        num_workers: int = ORIGINAL_CIFAR_WORKERS) -> float:
    """Training images/s of the original execution pattern on ``data.train_set`` (after ``warmup`` steps)."""
    if not isinstance(data.train_set, ImageTensorDataset):
        raise ValueError("the original-style comparison needs an in-memory (CIFAR-type) training set; for image-file "
                         "data sets add --synthetic")
    plain = original_style_config(config)
    trainer = Trainer(plain, device, None, None, quiet=True, data=data)
    dataset = PilImageDataset(data.train_set, pil_transform(plain, data.train_set))
    with warnings.catch_warnings():  # 4 workers on fewer cores is the original's setting, not a mistake here
        warnings.filterwarnings("ignore", message=".*worker processes.*")
        loader = DataLoader(dataset, batch_size=data.train_loader.batch_size, shuffle=True, num_workers=num_workers,
                            drop_last=True, persistent_workers=num_workers > 0)
        batches = iter(loader)
    combiner = build_combiner(plain, 1)
    model, gen, host_rng = trainer.step_model, torch.Generator(device=device), np.random.default_rng(0)
    model.train()
    seen, start = 0, time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            seen, start = 0, time.perf_counter()
        try:
            images, target = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, target = next(batches)
        images, target = images.to(device), target.to(device)
        out = combiner(model, images, target, trainer.criterion, gen, host_rng)
        trainer.optimizer.zero_grad()
        out.loss.backward()
        trainer.optimizer.step()
        _ = out.loss.item(), out.correct.item()  # the per-step host syncs of the original loop (logging, metrics)
        seen += target.shape[0]
    return seen / (time.perf_counter() - start)
