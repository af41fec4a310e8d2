"""Build train/test data sets and loaders from the ``data_loader`` config block."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from data_loader.augment import AUGMENTS
from data_loader.datasets import DATASETS, ImageTensorDataset
from data_loader.loader import SAMPLERS, BatchLoader
from utils.registry import ConfigError

# Keys of data_loader.args that configure the loader rather than the data set itself.
LOADER_KEYS = {"batch_size": int, "sampler": str, "augment": (dict, str), "drop_last": bool}


@dataclass
class DataBundle:
    """Everything the trainer and evaluator need from the data side."""

    train_set: ImageTensorDataset | None
    test_set: ImageTensorDataset
    train_loader: BatchLoader | None
    test_loader: BatchLoader

    @property
    def cls_num_list(self) -> list[int]:
        """Training images per class (the only source of class counts for losses and shot groups)."""
        if self.train_set is None:
            raise ValueError("no training set was built")
        return self.train_set.cls_num_list


def split_loader_args(block: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate data_loader.args into (data set kwargs, loader kwargs) and type-check the loader part."""
    args = dict(block.get("args") or {})
    loader = {k: args.pop(k) for k in list(args) if k in LOADER_KEYS}
    for key, kind in LOADER_KEYS.items():
        if key in loader and (not isinstance(loader[key], kind) or (kind is int and isinstance(loader[key], bool))):
            raise ConfigError(f"'data_loader.args.{key}' has the wrong type: {loader[key]!r}")
    if loader.get("batch_size", 1) < 1:
        raise ConfigError(f"'data_loader.args.batch_size' must be >= 1, got {loader['batch_size']}")
    if "sampler" in loader:
        SAMPLERS.get(loader["sampler"], where="data_loader.args.sampler")
    return args, loader


def build_dataset(config: dict[str, Any], split: str) -> ImageTensorDataset:
    """Build one split of the configured data set (validates the data set args)."""
    block = config["data_loader"]
    dataset_args, _ = split_loader_args(block)
    return DATASETS.build({"type": block.get("type"), "args": dataset_args}, "data_loader", split=split)


def build_data(config: dict[str, Any], device: torch.device, train: bool = True, limit_batches: int | None = None,
               rank: int = 0, world_size: int = 1) -> DataBundle:
    """Data sets on ``device`` plus loaders; with ``train=False`` only the test side is built."""
    _, loader_args = split_loader_args(config["data_loader"])
    channels_last = bool(config.get("trainer", {}).get("channels_last", False))
    seed = int(config.get("seed", 1))
    train_set = train_loader = None
    if train:
        train_set = build_dataset(config, "train").to(device)
        augment = AUGMENTS.build(loader_args.get("augment", "standard"), "data_loader.args.augment")
        train_loader = BatchLoader(train_set, loader_args.get("batch_size", 128), loader_args.get("sampler", "random"),
                                   augment, seed, loader_args.get("drop_last", False), channels_last, limit_batches,
                                   rank, world_size)
    test_set = build_dataset(config, "test").to(device)
    test_batch = int(config.get("evaluation", {}).get("test_batch_size", 512))
    test_loader = BatchLoader(test_set, test_batch, "sequential", None, seed, False, channels_last)
    return DataBundle(train_set, test_set, train_loader, test_loader)
