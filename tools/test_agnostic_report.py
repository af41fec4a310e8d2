"""Regenerate docs/results/test_agnostic_fmnist/ (docs/test_agnostic.md) from the saved logits of the Fashion-MNIST-LT
runs: every protocol for every method (test-time aggregation from saved views where the file has them, and the
plain mean), the estimator comparison for the methods named in --estimator_methods, tables, plots.

python -m tools.test_agnostic_report --logits logits/fmnist_ir100 --out docs/results/test_agnostic_fmnist

Method names are shortened to the config's method (``fmnist_ir100_ce-holdout_fraction0.1-...`` -> ``ce``). The
estimator rows use the source prior the method's posteriors are calibrated for: ``train`` for plain cross-entropy,
``uniform`` for the balanced losses (``--source_prior ce=train``).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from longtail.evaluation.saved_logits import LogitSet, expand_logit_files, load_logits
from longtail.evaluation.shift import (ShiftOptions, evaluate_logit_sets, family_summary, label_sets, plot_reliability,
                                       plot_severity, summarise)
from longtail.utils.tables import paper_table, to_markdown, write_csv

PROTOCOLS = ["fixed", "dirichlet", "dirichlet_sym", "tweak_one", "severity"]
ORDER = ["ce", "logit_adjust", "balpoe", "sade", "sade + sade", "dirmixe", "dirmixe + sade"]


def short_name(name: str) -> str:
    """fmnist_ir100_<method>[-override...] -> <method>."""
    match = re.match(r"^[a-z0-9]+_ir\d+_([a-z_]+?)(-.*)?$", name)
    return match.group(1) if match else name


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of ORDER (by method + aggregation label), the others after."""
    label = frame["method"] + frame["aggregation"].map(lambda a: "" if a == "mean" else f" + {a}")
    rank = label.map(lambda v: ORDER.index(v) if v in ORDER else len(ORDER))
    return frame.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank")


def evaluate(sets: Sequence[LogitSet], estimator_methods: Sequence[str], source_priors: dict[str, str],
             estimators: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    """(protocol rows, estimator rows, reliability bins)."""
    shift = ShiftOptions(protocols=PROTOCOLS)
    reliability: list = []
    parts = [evaluate_logit_sets(sets, shift, ["none"], "mean", reliability=reliability)]
    with_views = [s for s in sets if s.views_of]
    if with_views:
        parts.append(evaluate_logit_sets(with_views, shift, ["none"], with_views[0].views_of))
    estimator_parts = []
    for method in estimator_methods:
        chosen = [s for s in sets if s.name == method]
        for logit_set in chosen:
            logit_set.evaluation = {**logit_set.evaluation, "source_prior": source_priors.get(method, "uniform")}
        estimator_parts.append(evaluate_logit_sets(chosen, shift, ["none", "oracle", *estimators], "mean"))
    return (ordered(pd.concat(parts, ignore_index=True)),
            pd.concat(estimator_parts, ignore_index=True) if estimator_parts else pd.DataFrame(), reliability)


def tables(results: pd.DataFrame, estimates: pd.DataFrame) -> str:
    """The Markdown tables of docs/test_agnostic.md."""
    summary = summarise(results)
    out = [to_markdown(paper_table(summary[summary["protocol"] == "dirichlet"], ["mean", "spread", "worst", "many",
                                                                                "medium", "few"], None,
                                   caption="Dirichlet protocol (DirMixE's: 3 centres x 10 draws): top-1 (%) mean over "
                                           "the 30 test sets, spread (std over test sets), worst test set, "
                                           "many/medium/few; mean ± std over seeds"), row_title="method")]
    families = family_summary(results, "dirichlet")
    out.append(to_markdown(paper_table(families, ["all"], "family", ["forward100", "uniform", "backward100"],
                                       caption="Dirichlet protocol per centre: top-1 (%) mean over its 10 draws"),
                           row_title="method"))
    out.append(to_markdown(paper_table(summary, ["mean", "worst"], "protocol", PROTOCOLS,
                                       caption="every protocol: top-1 (%) mean and worst test set"), row_title="method"))
    severity = summary[summary["protocol"] == "severity"]
    out.append(to_markdown(paper_table(severity, ["area", "worst", "few_worst"], None,
                                       caption="severity curve backward-100 ... forward-100: normalised area (%), worst "
                                               "point, worst few-shot accuracy"), row_title="method"))
    out.append(to_markdown(paper_table(summary, ["ece", "nll"], "protocol", ["fixed", "dirichlet", "severity"],
                                       caption="calibration under shift (no correction): ECE (%) and NLL, mean over "
                                               "test sets"), row_title="method"))
    if len(estimates):
        est = summarise(estimates)
        est = est[est["protocol"].isin(["dirichlet", "tweak_one", "severity"])]
        est = est.assign(prior_tv=est["prior_tv"] * 100, prior_js=est["prior_js"] * 100)  # shown in units of 1e-2
        out.append(to_markdown(paper_table(est, ["prior_tv", "mean", "worst"], "protocol",
                                           ["dirichlet", "tweak_one", "severity"],
                                           caption="label-shift estimators: TV error (x 100) of the estimated prior, top-1 (%) "
                                                   "mean and worst after correcting with it; none = uncorrected, "
                                                   "oracle = the true prior"), row_title="method + correction"))
        out.append(to_markdown(paper_table(est, ["prior_js", "ece"], "protocol", ["dirichlet", "tweak_one", "severity"],
                                           caption="label-shift estimators: JS divergence (natural log, x 100) of the "
                                                   "estimate, ECE (%) after the correction"),
                               row_title="method + correction"))
    return "\n\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logits", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--estimator_methods", default="ce,balpoe")
    parser.add_argument("--estimators", default="estimate,bbse,rlls,bcts_em")
    parser.add_argument("--source_prior", default="ce=train", help="method=prior pairs (others: uniform)")
    args = parser.parse_args(argv)
    sets = [load_logits(path) for path in expand_logit_files(args.logits)]
    for logit_set in sets:
        logit_set.name = short_name(logit_set.name)
    label_sets(sets)
    priors = dict(item.split("=", 1) for item in args.source_prior.split(",") if item)
    results, estimates, reliability = evaluate(sets, [m for m in args.estimator_methods.split(",") if m], priors,
                                               [e for e in args.estimators.split(",") if e])
    out = Path(args.out)
    write_csv(results, out / "results.csv")
    write_csv(summarise(results), out / "summary.csv")
    if len(estimates):
        write_csv(estimates, out / "estimators.csv")
    (out / "tables.md").write_text(tables(results, estimates))
    plot_severity(results, out / "severity.png")
    first = {}
    for entry in reliability:
        first.setdefault(entry["method"], entry["run"])
    for method, run in first.items():
        plot_reliability([r for r in reliability if r["run"] == run and r["protocol"] == "fixed"],
                         out / f"reliability_{method}.png")
    print(f"wrote {out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
