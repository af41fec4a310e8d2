"""Summarise per-method result folders (written by tools/fmnist_methods_eval.sh) into one Markdown table.

Usage: python tools/summarize_methods.py RESULTS_DIR  ->  prints and writes RESULTS_DIR/summary.md
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.metrics import mean_std  # noqa: E402
from utils.tables import mean_std_cell as cell  # noqa: E402
from utils.tables import read_csv  # noqa: E402

ORDER = ["ce", "ce_reweight", "focal", "ldam_drw", "balanced_softmax", "crt", "tau_norm", "cbe", "ride",
         "ride_distill", "ride_router", "sade", "balpoe"]


def load(folder: Path) -> list[dict[str, Any]]:
    """Rows of folder/results.csv, or [] when the evaluation was not run."""
    path = folder / "results.csv"
    return read_csv(path) if path.exists() else []


def summarize(root: Path) -> str:
    """One row per method: uniform / forward50 / backward50 top-1 plain, with oracle and EM-estimated correction,
    with test-time aggregation, and ECE (%) on the uniform test set."""
    header = ["method", "runs", "uniform", "fwd50", "bwd50", "fwd50 +prior", "bwd50 +prior", "fwd50 +EM",
              "bwd50 +EM", "EM TV fwd/bwd", "TTA fwd50", "TTA uniform", "TTA bwd50", "ECE", "experts / MMACs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in ORDER:
        uniform, oracle = load(root / method / "uniform"), load(root / method / "oracle")
        estimate, tta = load(root / method / "estimate"), load(root / method / "tta")
        if not uniform:
            continue
        tv = "/".join(f"{mean_std([r['prior_tv'] for r in estimate if r['prior'] == p and r['posthoc'] == 'estimate'])[0]:.3f}"
                      for p in ("forward50", "backward50")) if estimate else ""
        routing = (f"{cell(uniform, 'experts_mean')} / {cell(uniform, 'mmacs')}" if "experts_mean" in uniform[0] else "")
        row = [method, str(len(uniform)), cell(uniform, "all"),
               cell(oracle, "all", prior="forward50", posthoc="none"), cell(oracle, "all", prior="backward50", posthoc="none"),
               cell(oracle, "all", prior="forward50", posthoc="oracle"), cell(oracle, "all", prior="backward50", posthoc="oracle"),
               cell(estimate, "all", prior="forward50", posthoc="estimate"),
               cell(estimate, "all", prior="backward50", posthoc="estimate"), tv,
               cell(tta, "all", prior="forward50", posthoc="none"), cell(tta, "all", prior="uniform", posthoc="none"),
               cell(tta, "all", prior="backward50", posthoc="none"), cell(uniform, "ece"), routing]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    table = summarize(root)
    (root / "summary.md").write_text(table + "\n")
    print(table)
