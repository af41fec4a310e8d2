"""Command line of test.py and test_all_*.py (one parser; the scripts differ only in their list of test priors).

python test.py -r CKPT [CKPT ...]                       uniform test set
python test_all_cifar.py -r CKPT [...] [--posthoc_bias_correction [oracle|estimate]] [--priors ...]
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from longtail.evaluation.runner import EvalOptions, evaluate_priors, evaluate_uniform
from longtail.cli.protocols import add_shift_arguments, shift_options_from_args, wants_shift
from longtail.evaluation.shift import evaluate_shift
from longtail.utils.device import set_threads
from longtail.cli.common import add_method_flags, add_set_argument, method_flag_overrides, run_tool, set_overrides


def build_parser(description: str, with_priors: bool) -> argparse.ArgumentParser:
    """Arguments shared by test.py and test_all_*.py (plus the flags method plugins contribute)."""
    tool = "test_all" if with_priors else "test"
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-r", "--resume", nargs="+", required=not with_priors,
                   help="checkpoint(s): paths, quoted globs ('saved/x/seed*/last.pth'), run directories or a folder "
                        "of runs (saved/<name>/: every run's last.pth)")
    p.add_argument("-c", "--config", help="a config file: replaces the checkpoint's top-level sections; required to "
                                          "evaluate a checkpoint written by another code base (same architecture "
                                          "and data set; readers: docs/methods.md)")
    p.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--data_dir", help="override the data directory stored in the checkpoint's config")
    p.add_argument("--batch_size", type=int, help="evaluation batch size (default: evaluation.test_batch_size)")
    p.add_argument("--out", help="folder for results.csv/.md/.tex (+ plot); default results/<name>-<time> for several checkpoints")
    p.add_argument("--format", choices=("paper", "long", "wide"), default="paper",
                   help="console layout: paper (methods or seeds as rows, mean ± std, best in bold in the files), long "
                        "(the tidy table: one row per checkpoint x prior x correction) or wide (one row per run); "
                        "results.csv is always the tidy table, results.md/.tex the paper tables")
    p.add_argument("--include_unfinished", action="store_true",
                   help="also evaluate runs whose training did not finish (refused by default when several "
                        "checkpoints are aggregated; their rows are marked in the 'status' column and the run label)")
    p.add_argument("--latest", action="store_true",
                   help="of several runs of one config and seed (e.g. a demo run twice), keep the most recently "
                        "written one (by default that is an error: they would be averaged as one seed)")
    p.add_argument("--threads", type=int,
                   help="CPU intra-op threads (default: from the free cores, as train.py; 1 beside other busy jobs)")
    add_set_argument(p, "evaluation.source_prior=train")
    if with_priors:
        p.add_argument("--posthoc_bias_correction", nargs="?", const="oracle", metavar="oracle|estimate",
                       help="also report accuracies after a post-hoc correction of the logits: 'oracle' (default: add log q - "
                            "log pi_source, q the true prior of each test set) or 'estimate' (EM estimate from the unlabeled predictions, "
                            "relative to evaluation.source_prior: uniform | train | train^g)")
        p.add_argument("--aggregation", default="mean",
                       help="how expert logits are combined per test prior: 'mean' (default) or a registered test-time "
                            "procedure (settings: evaluation.test_time.<name>; list: docs/methods.md)")
        p.add_argument("--groups", action="store_true",
                       help="console table with many/medium/few/all per prior (default: all only; the files always "
                            "have every group)")
        p.add_argument("--priors", nargs="+",
                       help="subset/order of test priors to evaluate (space- or comma-separated, e.g. uniform,backward50)")
        add_shift_arguments(p)
    add_method_flags(p, tool)
    return p


def split_names(values: Sequence[str] | None) -> list[str]:
    """['uniform,backward50', 'forward2'] -> ['uniform', 'backward50', 'forward2']."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def options_from_args(args: argparse.Namespace, tool: str, priors: Sequence[str] = ()) -> EvalOptions:
    """The evaluation options a parsed command line asks for (and the CPU threads it asks for, applied now)."""
    print(set_threads(args.threads), file=sys.stderr)
    overrides: list[tuple[str, Any]] = []
    if args.data_dir:
        overrides.append(("data_loader.args.data_dir", args.data_dir))
    if args.batch_size:
        overrides.append(("evaluation.test_batch_size", args.batch_size))
    overrides += method_flag_overrides(args, tool) + set_overrides(args)
    options = EvalOptions(args.resume or [], args.device, overrides, args.out, format=args.format, config=args.config,
                          include_unfinished=args.include_unfinished, latest=args.latest)
    if tool == "test_all":
        options.priors = split_names(args.priors) or list(priors)
        options.posthoc = ["none"] + ([args.posthoc_bias_correction] if args.posthoc_bias_correction else [])
        options.aggregation = args.aggregation
        options.groups = args.groups
    return options


def _done(results: Any) -> int:
    """Exit code of a finished evaluation."""
    return 0


def uniform_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of test.py."""
    parser = build_parser("Evaluate checkpoints on the uniform test set.", with_priors=False)
    return run_tool(parser, lambda args: _done(evaluate_uniform(options_from_args(args, "test"))), argv)


def priors_main(priors: Sequence[str] = (), argv: Sequence[str] | None = None, description: str = "") -> int:
    """Entry point of the test_all_*.py scripts: they differ only in ``priors`` (default: the checkpoint's data set's
    protocol, e.g. forward3 ... backward3 for iNaturalist)."""
    parser = build_parser(description or "Evaluate checkpoints under shifted test class priors.", with_priors=True)

    def run(args: argparse.Namespace) -> int:
        if not args.resume and not args.logits:
            parser.error("give checkpoints (-r) or saved logits files (--logits)")
        options = options_from_args(args, "test_all", priors)
        if wants_shift(args):  # protocols beyond the fixed priors, estimators, logits files (evaluation/shift.py)
            return _done(evaluate_shift(options, shift_options_from_args(args)))
        return _done(evaluate_priors(options))

    return run_tool(parser, run, argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m longtail.cli.evaluate`` / ``lt-test-all``: every test prior of the checkpoint's data set."""
    return priors_main(argv=argv)


if __name__ == "__main__":
    sys.exit(main())
