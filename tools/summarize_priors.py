"""One Markdown table of 'all' accuracy (mean ± std over seeds) per method and test prior, plain and post-hoc corrected.

Reads RESULTS_DIR/<method>/results.csv (test_all_*.py --out) and RESULTS_DIR/<method>/uniform/results.csv (test.py
--out, for ECE) as written by tools/fmnist_table.sh.
Usage: python tools/summarize_priors.py RESULTS_DIR METHOD [METHOD ...]  ->  prints and writes RESULTS_DIR/priors.md
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tables import mean_std_cell, read_csv  # noqa: E402

SHORT = {"forward": "f", "backward": "b", "uniform": "uni"}


def short_name(prior: str) -> str:
    """forward50 -> f50, backward2 -> b2, uniform -> uni (keeps the table narrow)."""
    for long, short in SHORT.items():
        if prior.startswith(long):
            return short + prior[len(long):]
    return prior


def summarize(root: Path, methods: list[str]) -> str:
    """Rows: method x post-hoc mode; columns: the test priors in file order, then ECE (%) on the uniform test set."""
    lines: list[str] = []
    for method in methods:
        rows = read_csv(root / method / "results.csv")
        priors = list(dict.fromkeys(r["prior"] for r in rows))
        if not lines:
            header = ["method", "seeds", *map(short_name, priors), "ECE"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        uniform_csv = root / method / "uniform" / "results.csv"
        ece = mean_std_cell(read_csv(uniform_csv), "ece") if uniform_csv.exists() else ""
        seeds = str(len({r["checkpoint"] for r in rows}))
        for mode in dict.fromkeys(r["posthoc"] for r in rows):
            cells = [mean_std_cell(rows, "all", prior=prior, posthoc=mode) for prior in priors]
            label = method if mode == "none" else f"{method} + {mode} prior"
            lines.append("| " + " | ".join([label, seeds, *cells, ece if mode == "none" else ""]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    table = summarize(root, sys.argv[2:])
    (root / "priors.md").write_text(table + "\n")
    print(table)
