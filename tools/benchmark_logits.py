"""Benchmark of the test-agnostic evaluation from saved logits: read the files and evaluate every protocol.

python -m tools.benchmark_logits --logits DIR_OR_FILES [--estimators em,bbse,...]
python -m tools.benchmark_logits --synthetic 15        # Fashion-MNIST-shaped files (N 10,000, C 10) made up first

Files that hold test-time views are evaluated with the aggregation they were collected for (``views_of``), the
others with the plain expert mean; every protocol with its default settings. Prints the wall time of reading plus
evaluating, the number of test sets and rows, and the CPU model.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from longtail.data_loader.profiles import lt_class_counts
from longtail.evaluation.saved_logits import LogitSet, expand_logit_files, load_logits, save_logits
from longtail.evaluation.shift import ShiftOptions, estimator_corrections, evaluate_logit_sets, label_sets
from longtail.registry import TEST_PROTOCOLS
from tools.benchmark import cpu_name


def synthetic_files(folder: Path, count: int) -> list[Path]:
    """``count`` Fashion-MNIST-shaped files: 5 methods x seeds, 3 experts for every second method, views (5 pairs)
    for the last two methods, held-out logits for all."""
    methods = ["ce", "logit_adjust", "balpoe", "sade", "dirmixe"]
    paths = []
    for i in range(count):
        method, seed = methods[i % len(methods)], i // len(methods)
        gen = torch.Generator().manual_seed(i)
        experts = 3 if method in ("balpoe", "sade", "dirmixe") else 1
        targets = torch.arange(10).repeat_interleave(1000)
        logits = torch.randn(10000, experts, 10, generator=gen) + 4 * torch.nn.functional.one_hot(targets, 10)[:, None]
        held_targets = torch.arange(10).repeat_interleave(50)
        held = torch.randn(500, experts, 10, generator=gen) + 4 * torch.nn.functional.one_hot(held_targets, 10)[:, None]
        views = None
        if method in ("sade", "dirmixe"):
            views = logits[None, None] + 0.5 * torch.randn(5, 2, 10000, experts, 10, generator=gen)
        logit_set = LogitSet(logits, targets, lt_class_counts(6000, 10, 0.01), method, seed, "",
                             {"many_threshold": 1000, "few_threshold": 200}, {}, {}, 0, held, held_targets, views,
                             "sade" if views is not None else "")
        paths.append(save_logits(logit_set, folder / f"{method}-seed{seed}.safetensors", torch.float16))
    return paths


def run(files: Sequence[Path], estimators: Sequence[str]) -> None:
    """Read and evaluate; print the figures."""
    shift = ShiftOptions(protocols=TEST_PROTOCOLS.names())
    modes = ["none"] + (["oracle", *estimator_corrections(estimators)] if estimators else [])
    start, cpu_start = time.perf_counter(), time.process_time()
    sets = [load_logits(path) for path in files]
    for logit_set, path in zip(sets, files):
        logit_set.checkpoint = logit_set.checkpoint or str(path)
    label_sets(sets)
    read = time.perf_counter() - start
    with_views = [s for s in sets if s.views_of]
    groups = {aggregation: [s for s in sets if (s.views_of or "mean") == aggregation]
              for aggregation in dict.fromkeys(s.views_of or "mean" for s in sets)}
    rows = pd.concat([evaluate_logit_sets(group, shift, modes, aggregation) for aggregation, group in groups.items()])
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"{len(files)} logits files ({len(with_views)} with test-time aggregation from saved views), protocols "
          f"{', '.join(shift.protocols)}, corrections {', '.join(modes)}: {rows['prior'].nunique()} test sets per file, "
          f"{len(rows)} result rows")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"read {read:.1f} s + evaluate {total - read:.1f} s = {total:.1f} s wall ({cpu:.1f} s CPU time of this "
          f"process), torch threads {torch.get_num_threads()}, machine load average {load}, CPU: {cpu_name()} "
          f"({os.cpu_count()} cores)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logits", nargs="+", help="logits files, folders or quoted globs")
    parser.add_argument("--synthetic", type=int, help="make up this many Fashion-MNIST-shaped files first")
    parser.add_argument("--estimators", default="", help="also run these estimators (e.g. em,bbse,rlls,bcts_em)")
    args = parser.parse_args(argv)
    estimators = [e for e in args.estimators.split(",") if e]
    if args.synthetic:
        with tempfile.TemporaryDirectory() as folder:
            files = synthetic_files(Path(folder), args.synthetic)
            run(files, estimators)
        return 0
    if not args.logits:
        parser.error("give --logits or --synthetic N")
    run(expand_logit_files(args.logits), estimators)
    return 0


if __name__ == "__main__":
    sys.exit(main())
