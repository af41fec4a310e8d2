"""The ``subset`` data set wrapper: a held-out validation part carved from the training split, and class-group
views with an extra "other" class (Class-Balanced Experts, docs/methods.md).

Splits of ``subset``: ``train`` = the base training split minus the held-out part, ``val`` = the held-out part
(original labels), ``test`` = the base test split. With ``group`` set, every split keeps the images of that group's
classes, relabelled 0..k-1 in increasing original-label order, plus a seeded random sample of the other images
labelled k ("other"): ``floor(#closed / open_ratio)`` of them for train/val, ``floor(#closed / test_open_ratio)`` for
test (capped by what exists). Groups come from the FULL base training counts with the evaluation rule
(many: n > many_threshold, few: n < few_threshold), so they match the shot groups of the evaluation.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from longtail.data_loader.datasets import ImageTensorDataset, dataset_info, holdout_count, holdout_split
from longtail.registry import DATASETS
from longtail.utils.defaults import FEW_THRESHOLD, MANY_THRESHOLD
from longtail.utils.errors import ConfigError
from longtail.utils.metrics import group_classes
from longtail.utils.seed import Stream, numpy_generator

GROUPS = ("many", "medium", "few")


def open_count(closed: int, available: int, ratio: float) -> int:
    """Number of "other" images next to ``closed`` in-group images: floor(closed / ratio), capped by ``available``."""
    return min(available, int(math.floor(closed / ratio)))


def group_indices(targets: torch.Tensor, classes: Sequence[int], ratio: float, seed: int) -> torch.Tensor:
    """Ascending indices of every in-group image plus a seeded random sample of open_count(...) out-of-group images."""
    labels = targets.cpu().numpy()
    inside = np.isin(labels, np.asarray(list(classes)))
    closed, others = np.flatnonzero(inside), np.flatnonzero(~inside)
    chosen = numpy_generator(seed, Stream.OPEN).permutation(others)[:open_count(len(closed), len(others), ratio)]
    return torch.from_numpy(np.sort(np.concatenate([closed, chosen]))).long()


def relabel_map(classes: Sequence[int], num_classes: int) -> torch.Tensor:
    """Original label -> expert label: the group's classes become 0..k-1 (ascending), every other class k."""
    mapping = torch.full((num_classes,), len(classes), dtype=torch.long)
    mapping[torch.as_tensor(sorted(classes), dtype=torch.long)] = torch.arange(len(classes))
    return mapping


def take(dataset: ImageTensorDataset, idx: torch.Tensor, name: str, targets: torch.Tensor | None = None,
         num_classes: int | None = None, class_names: list[str] | None = None) -> ImageTensorDataset:
    """A new data set with the images at ``idx`` (optionally relabelled)."""
    idx = idx.to(dataset.images.device)
    return ImageTensorDataset(dataset.images[idx], dataset.targets[idx] if targets is None else targets,
                              num_classes or dataset.num_classes, dataset.mean, dataset.std, name,
                              class_names if class_names is not None else list(dataset.class_names), dataset.split_seed)


def group_view(dataset: ImageTensorDataset, classes: Sequence[int], ratio: float, seed: int) -> ImageTensorDataset:
    """The group's images relabelled 0..k-1 plus sampled "other" images labelled k."""
    idx = group_indices(dataset.targets, classes, ratio, seed)
    targets = relabel_map(classes, dataset.num_classes).to(dataset.targets.device)[dataset.targets[idx.to(dataset.targets.device)]]
    names = [dataset.class_names[c] for c in classes] if dataset.class_names else []
    return take(dataset, idx, f"{dataset.name}/group", targets, len(classes) + 1, names + ["other"] if names else [])


def _check(split: str, holdout_fraction: float, group: str | None, open_ratio: float, test_open_ratio: float) -> None:
    """Clear errors for bad subset arguments."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"subset: split must be 'train', 'val' or 'test', got {split!r}")
    if not 0 <= holdout_fraction < 1:
        raise ConfigError(f"data_loader.args.holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if split == "val" and holdout_fraction <= 0:
        raise ConfigError("the 'val' split of a subset needs data_loader.args.holdout_fraction > 0")
    if group is not None and group not in GROUPS:
        raise ConfigError(f"data_loader.args.group must be one of {', '.join(GROUPS)} (or null), got {group!r}")
    if open_ratio <= 0 or test_open_ratio <= 0:
        raise ConfigError("data_loader.args.open_ratio and test_open_ratio must be > 0")


@DATASETS.register("subset")
def subset(split: str = "train", base: dict[str, Any] | None = None, holdout_fraction: float = 0.0,
           holdout_max_per_class: int = 20, group: str | None = None, open_ratio: float = 16.0,
           test_open_ratio: float = 1.0, many_threshold: int = MANY_THRESHOLD, few_threshold: int = FEW_THRESHOLD,
           seed: int = 0, data_dir: str | None = None) -> ImageTensorDataset:
    """A held-out part of ``base``'s training split and/or one class group of it with an "other" class.

    ``data_dir`` (optional) replaces ``base.args.data_dir``, so --data_dir works as for any data set."""
    _check(split, holdout_fraction, group, open_ratio, test_open_ratio)
    if not base:
        raise ConfigError('data_loader.args.base must name the wrapped data set, e.g. {"type": "cifar100_lt", "args": {...}}')
    if data_dir is not None:
        base = {**base, "args": {**(base.get("args") or {}), "data_dir": data_dir}}
    full = DATASETS.build(base, "data_loader.args.base", split="train") if split != "test" or group else None
    if split == "test":
        data = DATASETS.build(base, "data_loader.args.base", split="test")
    elif holdout_fraction > 0:
        keep, held = holdout_split(full.targets, full.num_classes, holdout_fraction, holdout_max_per_class, seed)
        data = take(full, keep if split == "train" else held, f"{full.name}/{'rest' if split == 'train' else 'heldout'}")
    else:
        data = full
    if group is None:
        return data
    classes = group_classes(full.cls_num_list, group, many_threshold, few_threshold)
    if not classes:
        raise ConfigError(f"class group {group!r} is empty for these training counts; change many_threshold/few_threshold")
    return group_view(data, classes, test_open_ratio if split == "test" else open_ratio, seed)


def subset_info(args: dict[str, Any]) -> dict[str, Any]:
    """Shape facts and training counts of a ``subset`` config without reading files (for build_without_data)."""
    base = args.get("base") or {}
    info = dataset_info(base.get("type"), dict(base.get("args") or {}))
    full = info["cls_num_list"]
    fraction, cap = args.get("holdout_fraction", 0.0), args.get("holdout_max_per_class", 20)
    counts = [n - holdout_count(n, fraction, cap) for n in full]
    group = args.get("group")
    if group is not None:
        classes = group_classes(full, group, args.get("many_threshold", MANY_THRESHOLD), args.get("few_threshold", FEW_THRESHOLD))
        closed = [counts[c] for c in classes]
        others = open_count(sum(closed), sum(counts) - sum(closed), args.get("open_ratio", 16.0))
        counts = closed + [others]
    return {**info, "num_classes": len(counts), "cls_num_list": counts}


subset.info_for = subset_info  # type: ignore[attr-defined]
