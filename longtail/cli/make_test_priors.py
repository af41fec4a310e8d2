"""Build forward/backward-K (and uniform) test lists from a balanced test list and the training list.

python -m longtail.cli.make_test_priors --test_list data_txt/ImageNet_LT/ImageNet_LT_test.txt --train_list TRAIN.txt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from longtail.data_loader.profiles import CIFAR_TEST_PRIORS, DATASET_PRIORS
from longtail.data_loader.official_lists import read_class_counts
from longtail.data_loader.test_priors import default_prefix, make_test_priors, train_counts_from_list
from longtail.cli.common import run_tool


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="Build forward/backward-K (and uniform) test lists from a balanced test "
                                            "list and the training list (procedure: docs/methods.md, shifted test "
                                            "priors).")
    p.add_argument("--test_list", required=True, help="balanced test list, e.g. data_txt/ImageNet_LT/ImageNet_LT_test.txt")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--train_list", help="training list (its per-class counts rank the classes)")
    source.add_argument("--train_counts", help="per-class training counts instead ('label count' lines), e.g. "
                                               "data_txt/ImageNet_LT/ImageNet_LT_train_counts.txt")
    p.add_argument("--out_dir", help="folder for the lists (default: the test list's folder)")
    p.add_argument("--prefix", help="file name prefix, e.g. ImageNet_LT_ (default: the test list's name without "
                                    "its trailing 'test' or 'val')")
    p.add_argument("--dataset", choices=sorted(DATASET_PRIORS), help="use this benchmark's prior set")
    p.add_argument("--priors", nargs="+", help="explicit priors, e.g. forward50 uniform backward50")
    p.add_argument("--num_classes", type=int, help="class count (default: largest label + 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class random subsets")
    return p


def run(args: argparse.Namespace) -> int:
    """Write the lists and print one line per file."""
    test_list = Path(args.test_list)
    priors = args.priors or DATASET_PRIORS.get(args.dataset or "", CIFAR_TEST_PRIORS)
    prefix = args.prefix if args.prefix is not None else default_prefix(test_list.stem)
    counts = (read_class_counts(args.train_counts) if args.train_counts
              else train_counts_from_list(Path(args.train_list), args.num_classes))
    written = make_test_priors(test_list, counts, Path(args.out_dir or test_list.parent), prefix, priors, args.seed)
    for path in written:
        print(f"wrote {path} ({sum(1 for _ in path.open())} images)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m longtail.cli.make_test_priors``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
