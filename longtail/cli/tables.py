"""Paper-style tables from one or more tidy results.csv files (test.py, test_all_*.py, longtail/cli/pipeline.py --evaluate).

python -m longtail.cli.tables saved/pipelines/*/results.csv --priors forward50,uniform,backward50 --metrics all
Rows are methods (with their post-hoc correction / aggregation) or, for one method, its seeds plus "mean ± std";
columns are the test priors with the chosen metrics inside; cells are "mean ± std"; the best cell of each column is
bold in Markdown and LaTeX.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from longtail.cli.common import run_tool
from longtail.cli.evaluate import split_names
from longtail.utils.errors import DataError
from longtail.utils.tables import paper_table, read_csv, to_latex, to_markdown, to_text


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="Render paper-style tables (mean ± std, best in bold) from tidy results.csv "
                                            "files.")
    p.add_argument("results", nargs="+", help="results.csv files (concatenated)")
    p.add_argument("--metrics", default="many,medium,few,all", help="columns inside each prior (default: "
                   "many,medium,few,all; e.g. all, or ece,nll for the uniform report)")
    p.add_argument("--priors", help="test priors to show, in order (default: all, in file order)")
    p.add_argument("--posthoc", help="post-hoc corrections to show (default: all in the files), e.g. none,oracle")
    p.add_argument("--aggregations", help="aggregations to show (default: all in the files), e.g. mean")
    p.add_argument("--methods", help="methods to show, in order (default: all, in file order)")
    p.add_argument("--evaluation", choices=("test_all", "test"), default="test_all",
                   help="which rows of pipeline results: the test priors (test_all, default) or the uniform report (test)")
    p.add_argument("--style", choices=("markdown", "latex", "text"), default="markdown")
    p.add_argument("--digits", type=int, default=2)
    p.add_argument("--caption", default="")
    p.add_argument("--out", help="write the table to this file as well")
    p.add_argument("--include_unfinished", action="store_true",
                   help="keep rows of runs whose training did not finish (refused by default)")
    return p


def check_runs(frame: pd.DataFrame, include_unfinished: bool) -> None:
    """Refuse rows of unfinished runs (unless asked) and two checkpoints reporting the same method, seed and row:
    a table would average them as one seed."""
    if "status" in frame and not include_unfinished:
        unfinished = frame[frame["status"].astype(str).str.startswith("unfinished")]
        if not unfinished.empty:
            listing = "; ".join(f"{c} ({s})" for c, s in unfinished[["checkpoint", "status"]].drop_duplicates()
                                .itertuples(index=False))
            raise DataError(f"the results hold runs whose training did not finish: {listing}. Finish and re-evaluate "
                            "them, or pass --include_unfinished")
    keys = [k for k in ("evaluation", "method", "seed", "prior", "posthoc", "aggregation") if k in frame]
    if "checkpoint" in frame and {"method", "seed"} <= set(keys):
        sources = frame.groupby(keys, dropna=False)["checkpoint"].nunique()
        clashes = sources[sources > 1]
        if not clashes.empty:
            method, seed = (clashes.index[0][keys.index("method")], clashes.index[0][keys.index("seed")])
            paths = sorted(frame[(frame["method"] == method) & (frame["seed"] == seed)]["checkpoint"].unique())
            raise DataError(f"{method} seed {seed} comes from several checkpoints ({', '.join(paths)}): a table would "
                            "average them as one seed; re-evaluate with only the run you mean (or test_all --latest)")


def select(frame: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """The rows and row order the options ask for."""
    if "evaluation" in frame:
        frame = frame[frame["evaluation"] == args.evaluation]
    for column, flag in (("prior", "priors"), ("posthoc", "posthoc"), ("aggregation", "aggregations"),
                         ("method", "methods")):
        option = getattr(args, flag)
        wanted = split_names([option] if option else [])
        if wanted and column in frame:
            missing = sorted(set(wanted) - set(frame[column].astype(str)))
            if missing:
                raise DataError(f"--{flag} {missing} not in the results (found: {sorted(set(frame[column].astype(str)))})")
            frame = frame[frame[column].astype(str).isin(wanted)]
            if column == "method":
                frame = frame.assign(_order=frame["method"].map(wanted.index)).sort_values("_order", kind="stable")
    if frame.empty:
        raise DataError("no result rows left after the selection")
    return frame.drop(columns=["_order"], errors="ignore")


def run(args: argparse.Namespace) -> int:
    """Read, select, render, print (and write)."""
    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        raise DataError(f"results file(s) not found: {', '.join(missing)}")
    frame = select(pd.concat([read_csv(p) for p in args.results], ignore_index=True), args)
    check_runs(frame, args.include_unfinished)
    metrics = split_names([args.metrics])
    unknown = [m for m in metrics if m not in frame]
    if unknown:
        raise DataError(f"--metrics {unknown} are not columns of the results ({', '.join(frame.columns)})")
    several_priors = "prior" in frame and frame["prior"].nunique() > 1
    priors = split_names([args.priors]) if args.priors else None
    table = paper_table(frame, metrics, "prior" if several_priors else None, priors, caption=args.caption)
    render = {"markdown": to_markdown, "latex": to_latex, "text": lambda t, digits: to_text(t, digits)}[args.style]
    text = render(table, digits=args.digits)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m longtail.cli.tables``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
