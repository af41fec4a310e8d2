"""Paper-style tables from tidy results: mean ± std cells (sample std), rows per method or per seed, priors as
column groups, best per column in bold, LaTeX multicolumn headers, full-precision CSV."""
import math

import pandas as pd
import pytest

from longtail.utils.metrics import mean_std
from longtail.utils.tables import (best_mask, paper_table, plot_priors, read_csv, to_latex, to_markdown, to_text, wide_view,
                          write_csv)

# three seeds of one method on two priors: "all" values and a many-shot value
SEEDS = {1: (50.0, 60.0), 2: (52.0, 64.0), 3: (54.0, 56.0)}


def seed_rows(method="balpoe", offset=0.0, posthoc="none"):
    return [{"checkpoint": f"{method}/s{s}.pth", "run": f"seed{s}", "seed": s, "method": method, "prior": prior,
             "posthoc": posthoc, "many": 70.0 + s, "all": value + offset}
            for s, values in SEEDS.items() for prior, value in zip(("uniform", "forward5"), values)]


def test_one_method_has_seeds_as_rows_and_a_mean_std_row():
    table = paper_table(pd.DataFrame(seed_rows()), ["many", "all"], "prior", ["forward5", "uniform"])
    assert list(table.mean.index) == ["seed1", "seed2", "seed3", "mean ± std"]
    assert table.mean.loc["mean ± std", ("uniform", "all")] == pytest.approx(52.0)
    assert table.std.loc["mean ± std", ("uniform", "all")] == pytest.approx(2.0)  # sample std (ddof=1)
    assert table.std.loc["mean ± std", ("forward5", "all")] == pytest.approx(4.0)
    assert math.isnan(table.std.loc["seed1", ("uniform", "all")])  # one run: no std
    md = to_markdown(table)
    assert "| mean ± std | 72.00 ± 1.00 | 60.00 ± 4.00 | 72.00 ± 1.00 | 52.00 ± 2.00 |" in md
    assert "**64.00**" in md and "**54.00**" in md  # best seed per column
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_several_methods_are_rows_with_mean_std_cells_and_the_best_in_bold():
    frame = pd.DataFrame(seed_rows("ce") + seed_rows("balpoe", offset=5.0) + seed_rows("balpoe", 7.0, "oracle"))
    table = paper_table(frame, ["all"], "prior", ["uniform", "forward5"], caption="top-1_(%)")
    assert list(table.mean.index) == ["ce", "balpoe", "balpoe + oracle"]
    assert table.mean.loc["balpoe", ("uniform", "all")] == pytest.approx(57.0)
    assert best_mask(table).loc["balpoe + oracle"].all() and not best_mask(table).loc["ce"].any()
    text = to_text(table)
    assert "59.00 ± 2.00" in text and "uniform" in text.splitlines()[1]
    tex = to_latex(table, row_title="method")
    assert r"\multicolumn{1}{c}{uniform}" in tex and r"\textbf{59.00 $\pm$ 2.00}" in tex and r"top-1\_(\%)" in tex


def test_lower_is_better_metrics_bold_the_minimum():
    frame = pd.DataFrame([{"checkpoint": m, "run": m, "seed": 1, "method": m, "prior": "uniform", "ece": e}
                          for m, e in (("a", 3.0), ("b", 1.0))])
    table = paper_table(frame, ["ece"], column_key=None)
    assert best_mask(table).loc["b", "ece"] and not best_mask(table).loc["a", "ece"]


def test_csv_keeps_full_precision_and_views(tmp_path):
    rows = seed_rows()
    rows[0]["all"] = 50.123456789012
    path = write_csv(rows, tmp_path / "results.csv")
    back = read_csv(path)
    assert back.loc[0, "all"] == 50.123456789012 and back.loc[0, "prior"] == "uniform"
    wide = wide_view(back, ["all"])
    assert wide.loc[("seed2", "none"), ("forward5", "all")] == 64.0
    png = plot_priors(back, ["forward5", "uniform"], tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
