"""Forward/backward-K test lists of a txt-list data set (``python -m longtail.cli.make_test_priors``).

The selection procedure (``profiles.shifted_subset_indices``, docs/methods.md, shifted test priors) reproduces the official lists'
per-class counts; which images are kept is a seeded random subset per class (the official lists cannot be
reproduced image by image, so use them when you have them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from longtail.data_loader.image_lists import read_image_list
from longtail.data_loader.profiles import shifted_subset_indices


def write_list(path: Path, paths: Sequence[str], labels: Sequence[int]) -> Path:
    """Write ``relative/path label`` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {int(y)}\n" for p, y in zip(paths, labels)))
    return path


def train_counts_from_list(train_list: Path, num_classes: int | None = None) -> list[int]:
    """Training images per class counted from a training list."""
    _, labels = read_image_list(train_list)
    return np.bincount(labels, minlength=num_classes or int(labels.max()) + 1).tolist()


def make_test_priors(test_list: Path, train_counts: Sequence[int], out_dir: Path, prefix: str, priors: Sequence[str],
                     seed: int = 0) -> list[Path]:
    """Write ``<out_dir>/<prefix><prior>.txt`` for every prior from a balanced test list and the training counts."""
    test_paths, test_labels = read_image_list(test_list)
    counts = list(train_counts) + [0] * max(0, int(test_labels.max()) + 1 - len(train_counts))
    written = []
    for prior in priors:
        keep = shifted_subset_indices(test_labels, counts, prior, seed)
        written.append(write_list(out_dir / f"{prefix}{prior}.txt", [test_paths[i] for i in keep], test_labels[keep]))
    return written


def default_prefix(stem: str) -> str:
    """'ImageNet_LT_test' -> 'ImageNet_LT_', 'iNaturalist18_val' -> 'iNaturalist18_', 'mine' -> 'mine_'."""
    for split in ("test", "val"):
        if stem.endswith(split):
            return stem[: -len(split)]
    return f"{stem}_"
