"""Run a method's whole recipe for one or several seeds: python -m longtail.cli.pipeline PIPELINE.json --seeds 1-3.

Every stage gets its own run directory, linked to the earlier stages' checkpoints by exact path; the pipeline's state
is kept in <save_dir>/pipelines/<name>/seed<S>.json, so running the same command again skips finished stages and
resumes an interrupted one. --evaluate then evaluates the stages the pipeline lists into one tidy results.csv.
--launcher local|slurm runs every stage of every seed as its own job (processes here, or SLURM jobs through submitit;
docs/clusters.md) over the same state.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from longtail.cli.common import add_set_argument, positive_int, run_tool, set_overrides
from longtail.cli.sweep import add_launch_arguments, launch, launch_options
from longtail.cluster.sweep import freeze, pipeline_sweep
from longtail.pipeline import evaluate_pipeline, load_pipeline, parse_seeds, run_pipeline, state_folder
from longtail.utils.defaults import SAVE_DIR
from longtail.utils.tables import paper_table, to_text


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="Run the stages of a pipeline (configs/pipelines/*.json) for several "
                                            "seeds, resumably, and optionally evaluate them.")
    p.add_argument("pipeline", help="pipeline file, e.g. configs/pipelines/fmnist_ir100_single_stage.json")
    p.add_argument("--seeds", default="1", help="seeds: 1-5, 1,3,7 or a single number (default 1)")
    p.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--save_dir", default=SAVE_DIR, help=f"runs and the pipeline state go here (default {SAVE_DIR})")
    p.add_argument("--data_dir", help="data directory for every stage (data_loader.args.data_dir)")
    p.add_argument("--evaluate", action="store_true", help="afterwards, evaluate the stages listed in the pipeline into "
                                                           "<save_dir>/pipelines/<name>/results.csv")
    p.add_argument("--limit_batches", type=positive_int, help="cap training batches per epoch (smoke runs)")
    p.add_argument("--limit_val_batches", type=positive_int, help="cap validation batches (smoke runs)")
    p.add_argument("--verbose", action="store_true", help="progress bars and per-epoch logs of every stage")
    add_set_argument(p, "trainer.epochs=2 (every stage) or --set crt:optimizer.args.lr=0.01 (one stage)")
    add_launch_arguments(p, None)
    return p


def run(args: argparse.Namespace) -> int:
    """Train (and evaluate) the pipeline."""
    pipeline = load_pipeline(args.pipeline)
    seeds = parse_seeds(args.seeds)
    overrides = ([("data_loader.args.data_dir", args.data_dir)] if args.data_dir else []) + set_overrides(args)
    if args.launcher:  # every stage of every seed a job (processes here, or SLURM jobs)
        resources, train = launch_options(args)
        sweep = pipeline_sweep(args.pipeline, seeds, args.save_dir, overrides, resources, train,
                               evaluate=args.evaluate and bool(pipeline.evaluate))
        freeze(sweep)
        return launch(sweep, args.launcher, args.max_parallel)
    run_pipeline(pipeline, seeds, args.device, args.save_dir, overrides, quiet=not args.verbose,
                 limit_batches=args.limit_batches, limit_val_batches=args.limit_val_batches)
    print(f"state: {state_folder(pipeline, args.save_dir)}/seed<S>.json")
    if args.evaluate and pipeline.evaluate:
        results = evaluate_pipeline(pipeline, seeds, args.device, args.save_dir)
        priors = results[results["evaluation"] == "test_all"]
        print(to_text(paper_table(priors, ["all"], "prior", pipeline.priors or None,
                                  caption=f"{pipeline.name}: top-1 (%) per test prior")))
        print(f"wrote {state_folder(pipeline, args.save_dir) / 'results.csv'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m longtail.cli.pipeline``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
