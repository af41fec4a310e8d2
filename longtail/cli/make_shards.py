"""Write an image-list data set as WebDataset tar shards: lt-make-shards -c CONFIG --out DIR [--splits train].

The config names the data set as for training (ImageNet-LT, iNaturalist 2018, Places-LT, a custom txt_list or
image_folder; data_dir / txt_dir as usual). Every listed image of each split goes, unchanged and in list order, into
<out>/<split>-NNNNNN.tar, with an index next to them; then train with --set data_loader.args.shards=<out> (same
samples, labels, class counts, sampling and augmentation as the folder layout; data_loader/shards.py). The test split
keeps reading the folder and the official shifted lists unless --splits includes it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from longtail.cli.common import add_set_argument, positive_int, run_tool, set_overrides
from longtail.core.build import resolve
from longtail.data_loader.factory import build_dataset
from longtail.data_loader.image_lists import ImageListDataset
from longtail.data_loader.shards import write_shards
from longtail.utils.config import apply_overrides, load_config
from longtail.utils.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="Write the images of an image-list data set (official lists, custom lists "
                                            "or folders) as WebDataset tar shards plus an index.")
    p.add_argument("-c", "--config", required=True, help="a config of the data set (any method), e.g. one of configs/imagenet_lt/")
    p.add_argument("--out", required=True, help="folder for the shards (then: --set data_loader.args.shards=OUT)")
    p.add_argument("--splits", default="train", help="comma-separated splits to write (default: train)")
    p.add_argument("--shard_size", type=positive_int, default=1000, help="images per shard (default 1000)")
    p.add_argument("--max_shard_mb", type=float, default=3000.0, help="start a new shard beyond this size (MB)")
    p.add_argument("--data_dir", help="overrides data_loader.args.data_dir (where the list's paths start)")
    add_set_argument(p, "data_loader.args.txt_dir=/data/lists")
    return p


def run(args: argparse.Namespace) -> int:
    """Write every requested split and print what was written."""
    pairs = ([("data_loader.args.data_dir", args.data_dir)] if args.data_dir else []) + set_overrides(args)
    config = resolve(apply_overrides(load_config(args.config), pairs))
    config["data_loader"].setdefault("args", {}).pop("shards", None)  # read the folders, never earlier shards
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        dataset = build_dataset(config, split)
        if not isinstance(dataset, ImageListDataset):
            raise ConfigError(f"data_loader.type {config['data_loader']['type']!r} is not an image-file data set; "
                              "shards are for image lists and folders (ImageNet-LT, iNaturalist, Places-LT, custom)")
        start = time.perf_counter()
        description = write_shards(dataset, args.out, split, args.shard_size, args.max_shard_mb * 1e6)
        print(f"{split}: {description['samples']} images, {description['classes']} classes -> "
              f"{len(description['shards'])} shard(s) in {Path(args.out)} ({time.perf_counter() - start:.1f} s)")
    print(f"train from them with: --set data_loader.args.shards={args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lt-make-shards``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
