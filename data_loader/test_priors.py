"""``python -m utils.make_test_priors``: write forward/backward-K test lists of a txt-list data set.

The selection procedure (``profiles.shifted_subset_indices``, METHODS.md §1.3) reproduces the official lists'
per-class counts; which images are kept is a seeded random subset per class (the official lists cannot be
reproduced image by image, so use them when you have them).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data_loader.image_lists import read_image_list
from data_loader.profiles import CIFAR_TEST_PRIORS, DATASET_PRIORS, shifted_subset_indices


def write_list(path: Path, paths: Sequence[str], labels: Sequence[int]) -> Path:
    """Write ``relative/path label`` lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{p} {int(y)}\n" for p, y in zip(paths, labels)))
    return path


def make_test_priors(test_list: Path, train_list: Path, out_dir: Path, prefix: str, priors: Sequence[str],
                     seed: int = 0, num_classes: int | None = None) -> list[Path]:
    """Write ``<out_dir>/<prefix><prior>.txt`` for every prior from a balanced test list and the training list."""
    test_paths, test_labels = read_image_list(test_list)
    _, train_labels = read_image_list(train_list)
    classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    train_counts = np.bincount(train_labels, minlength=classes).tolist()
    written = []
    for prior in priors:
        keep = shifted_subset_indices(test_labels, train_counts, prior, seed)
        written.append(write_list(out_dir / f"{prefix}{prior}.txt", [test_paths[i] for i in keep], test_labels[keep]))
    return written


def default_prefix(stem: str) -> str:
    """'ImageNet_LT_test' -> 'ImageNet_LT_', 'iNaturalist18_val' -> 'iNaturalist18_', 'mine' -> 'mine_'."""
    for split in ("test", "val"):
        if stem.endswith(split):
            return stem[: -len(split)]
    return f"{stem}_"


def make_test_priors_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m utils.make_test_priors``."""
    p = argparse.ArgumentParser(description="Build forward/backward-K (and uniform) test lists from a balanced test "
                                            "list and the training list, with the procedure of METHODS.md §1.3.")
    p.add_argument("--test_list", required=True, help="balanced test list, e.g. data_txt/ImageNet_LT/ImageNet_LT_test.txt")
    p.add_argument("--train_list", required=True, help="training list (its per-class counts rank the classes)")
    p.add_argument("--out_dir", help="folder for the lists (default: the test list's folder)")
    p.add_argument("--prefix", help="file name prefix, e.g. ImageNet_LT_ (default: the test list's name without "
                                    "its trailing 'test' or 'val')")
    p.add_argument("--dataset", choices=sorted(DATASET_PRIORS), help="use this benchmark's prior set")
    p.add_argument("--priors", nargs="+", help="explicit priors, e.g. forward50 uniform backward50")
    p.add_argument("--num_classes", type=int, help="class count (default: largest label + 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class random subsets")
    args = p.parse_args(argv)
    test_list = Path(args.test_list)
    priors = args.priors or DATASET_PRIORS.get(args.dataset or "", CIFAR_TEST_PRIORS)
    prefix = args.prefix if args.prefix is not None else default_prefix(test_list.stem)
    try:
        written = make_test_priors(test_list, Path(args.train_list), Path(args.out_dir or test_list.parent), prefix,
                                   priors, args.seed, args.num_classes)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path} ({sum(1 for _ in path.open())} images)")
    return 0
