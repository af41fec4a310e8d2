"""Build train/test data sets and loaders from the ``data_loader`` config block."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from longtail.data_loader.datasets import ImageTensorDataset, dataset_info
from longtail.data_loader.loader import BatchLoader
from longtail.registry import DATASETS, LOADERS, SAMPLERS, TEST_VIEWS
from longtail.utils.defaults import TEST_BATCH_SIZE, TRAIN_BATCH_SIZE
from longtail.utils.errors import ConfigError, DataNotFoundError

# Keys of data_loader.args that configure the loader rather than the data set itself.
# batch_size is the GLOBAL batch of one optimizer step; under torchrun each of W processes takes batch_size / W.
# num_workers: decoding processes of image-file data sets (in-memory tensor data sets need none).
# decode: "pil" (workers decode and transform) or "device" (workers read bytes; JPEGs decoded on the training device).
# input: the model's preprocessing (size, resize, interpolation, mean, std, channels), usually written by the model's
# registered entry when the config is resolved (core/build.py apply_model_input); see InputSpec.
LOADER_KEYS = {"batch_size": int, "sampler": str, "augment": (dict, str), "drop_last": bool, "num_workers": int,
               "decode": str, "input": dict}
INPUT_KEYS = {"size": int, "resize": int, "interpolation": str, "mean": list, "std": list, "channels": int,
              "source": str}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class InputSpec:
    """What the model expects: ``size`` x ``size`` crops (evaluation: short side resized to ``resize``, centre crop),
    resampled with ``interpolation``, normalised with ``mean``/``std``, with ``channels`` channels (grey images are
    repeated). Image files are decoded and transformed at that size; in-memory images (CIFAR, Fashion-MNIST) are
    augmented at their own size and resized on the device."""

    size: int
    resize: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int | None = None


def check_input_block(block: dict[str, Any]) -> None:
    """``data_loader.args.input``: known keys with the right types, one mean/std per channel, a known interpolation."""
    unknown = sorted(set(block) - set(INPUT_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join('data_loader.args.input.' + k for k in unknown)}; it accepts "
                          f"{', '.join(INPUT_KEYS)}")
    for key, kind in INPUT_KEYS.items():
        value = block.get(key)
        if value is not None and (not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 1))):
            raise ConfigError(f"data_loader.args.input.{key} must be a{'positive integer' if kind is int else ' ' + kind.__name__}, "
                              f"got {value!r}")
    if block.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise ConfigError(f"data_loader.args.input.interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                          f"got {block['interpolation']!r}")
    if ("mean" in block) != ("std" in block) or len(block.get("mean", [])) != len(block.get("std", [])):
        raise ConfigError("data_loader.args.input needs mean and std together, one value per channel")


def input_spec(loader_args: dict[str, Any]) -> InputSpec | None:
    """The model's preprocessing from ``data_loader.args.input`` (None: the data set's own)."""
    block = loader_args.get("input")
    if not block:
        return None
    check_input_block(block)
    if "size" not in block or "mean" not in block:
        raise ConfigError("data_loader.args.input needs at least size, mean and std")
    size = int(block["size"])
    return InputSpec(size, int(block.get("resize") or math.floor(size / 0.875)), block.get("interpolation", "bilinear"),
                     tuple(float(v) for v in block["mean"]), tuple(float(v) for v in block["std"]), block.get("channels"))


def model_input_shape(shape: tuple[int, ...], loader_args: dict[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) the model receives: the data set's image shape, or the input block's."""
    spec = input_spec(loader_args)
    if spec is None:
        return tuple(shape)  # type: ignore[return-value]
    channels = spec.channels or (shape[0] if len(spec.mean) == shape[0] or len(spec.mean) == 1 else len(spec.mean))
    return int(channels), spec.size, spec.size


@dataclass
class DataBundle:
    """Everything the trainer and evaluator need from the data side."""

    train_set: ImageTensorDataset | None  # or an ImageListDataset: same interface
    test_set: ImageTensorDataset
    train_loader: BatchLoader | None  # or an ImageListLoader (LOADERS, chosen by the data set's loader_kind)
    test_loader: BatchLoader

    @property
    def cls_num_list(self) -> list[int]:
        """Training images per class (the only source of class counts for losses and shot groups)."""
        if self.train_set is None:
            raise RuntimeError("no training set was built (build_data(train=False))")
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
    """Build one split of the configured data set (validates the data set args), with the model's preprocessing
    (``data_loader.args.input``) when the config has one."""
    block = config["data_loader"]
    dataset_args, loader_args = split_loader_args(block)
    dataset = DATASETS.build({"type": block.get("type"), "args": dataset_args}, "data_loader", split=split)
    spec = input_spec(loader_args)
    return dataset if spec is None else dataset.with_input(spec)


def training_counts(config: dict[str, Any]) -> list[int]:
    """Training images per class of the configured data set: counted from the training split, or, when its list is
    not available (ImageNet-LT's is not shipped), read from ``<txt_dir>/<prefix>train_counts.txt``."""
    try:
        return build_dataset(config, "train").cls_num_list
    except DataNotFoundError:
        args, _ = split_loader_args(config["data_loader"])
        defaults = {k: p.default for k, p in DATASETS.signature(config["data_loader"]["type"]).items()}
        txt_dir, prefix = args.get("txt_dir", defaults.get("txt_dir")), args.get("prior_list_prefix",
                                                                                 defaults.get("prior_list_prefix"))
        counts = Path(str(txt_dir)) / f"{prefix}train_counts.txt" if txt_dir and prefix else None
        if counts is None or not counts.is_file():
            raise
        from longtail.data_loader.official_lists import read_class_counts

        return read_class_counts(counts)


def loader_kind(dataset_type: str, dataset_args: dict[str, Any]) -> str:
    """The LOADERS entry that iterates ``dataset_type`` (known without reading files: its registered info)."""
    return dataset_info(dataset_type, dataset_args).get("loader", "tensor")


def build_augment(kind: str, loader_args: dict[str, Any], image_size: int) -> Any:
    """The training augmentation of ``data_loader.args.augment`` from the registry of loader kind ``kind``.

    ``image_size`` (output crop size; the model's input size when ``data_loader.args.input`` is set) reaches the
    augmentations that take a ``size``, and the input's ``interpolation`` those that take one; others drop them.
    """
    cls = LOADERS.get(kind, where="data_loader.type")
    spec = input_spec(loader_args)
    block = loader_args.get("augment", cls.default_augment)
    given = (block.get("args") or {}) if isinstance(block, dict) else {}
    extra = {} if spec is None else {k: v for k, v in (("size", spec.size), ("interpolation", spec.interpolation))
                                     if k not in given}  # an interpolation the config names itself wins
    return cls.augments.build(block, "data_loader.args.augment", **{"size": image_size, **extra})


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """Split the global batch over ``world_size`` processes (it must divide evenly)."""
    if batch_size % world_size:
        raise ConfigError(f"data_loader.args.batch_size = {batch_size} is the global batch and must be divisible by "
                          f"the {world_size} processes; change --batch_size or the number of processes")
    return batch_size // world_size


def plain_loader(config: dict[str, Any], dataset: Any, device: torch.device, batch_size: int | None = None) -> BatchLoader:
    """Every image of ``dataset`` once, in order, with the test transform (no augmentation): features of a training
    set for classifier initialisation or a feature cache."""
    _, loader_args = split_loader_args(config["data_loader"])
    size = batch_size or int(config.get("evaluation", {}).get("test_batch_size", 512))
    return LOADERS.build(dataset.loader_kind, "data_loader", dataset=dataset, batch_size=size, sampler="sequential",
                         augment=None, drop_last=False, seed=int(config.get("seed", 1)),
                         channels_last=bool(config.get("trainer", {}).get("channels_last", False)),
                         num_workers=loader_args.get("num_workers", 0), device=device,
                         decode=loader_args.get("decode", "pil"))


def build_data(config: dict[str, Any], device: torch.device, train: bool = True, limit_batches: int | None = None,
               rank: int = 0, world_size: int = 1, limit_val_batches: int | None = None) -> DataBundle:
    """Data sets on ``device`` plus loaders; with ``train=False`` only the test side is built.

    The training loader of process ``rank`` of ``world_size`` yields its share of each global batch; the test
    loader covers the whole test set (evaluation runs on one process) unless ``limit_val_batches`` caps it.
    """
    _, loader_args = split_loader_args(config["data_loader"])
    common = {"channels_last": bool(config.get("trainer", {}).get("channels_last", False)),
              "seed": int(config.get("seed", 1)), "num_workers": loader_args.get("num_workers", 0), "device": device,
              "decode": loader_args.get("decode", "pil")}
    train_set = train_loader = None
    if train:
        train_set = build_dataset(config, "train").to(device)
        augment = build_augment(train_set.loader_kind, loader_args, train_set.image_shape[-1])
        train_loader = LOADERS.build(train_set.loader_kind, "data_loader", dataset=train_set,
                                     batch_size=per_rank_batch_size(loader_args.get("batch_size", TRAIN_BATCH_SIZE), world_size),
                                     sampler=loader_args.get("sampler", "random"), augment=augment,
                                     drop_last=loader_args.get("drop_last", False), limit_batches=limit_batches,
                                     rank=rank, world_size=world_size, **common)
    test_set = build_dataset(config, "test").to(device)
    test_batch = int(config.get("evaluation", {}).get("test_batch_size", TEST_BATCH_SIZE))
    views = TEST_VIEWS.build(config.get("evaluation", {}).get("views", "center"), "evaluation.views")
    test_loader = LOADERS.build(test_set.loader_kind, "data_loader", dataset=test_set, batch_size=test_batch,
                                sampler="sequential", augment=None, drop_last=False, limit_batches=limit_val_batches,
                                views=views, **common)
    return DataBundle(train_set, test_set, train_loader, test_loader)


def build_eval_loader(config: dict[str, Any], split: str, device: torch.device, batch_size: int | None = None) -> Any:
    """A sequential loader over ``split`` ('train', 'test', or 'val' where the data set has one) without
    augmentation: every image once, in data set order (predictions of a split, held-out logits)."""
    _, loader_args = split_loader_args(config["data_loader"])
    dataset = build_dataset(config, split).to(device)
    batch = int(batch_size or config.get("evaluation", {}).get("test_batch_size", TEST_BATCH_SIZE))
    return LOADERS.build(dataset.loader_kind, "data_loader", dataset=dataset, batch_size=batch, sampler="sequential",
                         augment=None, drop_last=False, limit_batches=None,
                         channels_last=bool(config.get("trainer", {}).get("channels_last", False)),
                         seed=int(config.get("seed", 1)), num_workers=loader_args.get("num_workers", 0), device=device,
                         decode=loader_args.get("decode", "pil"))
