"""Result tables from one tidy DataFrame (one row per checkpoint x test prior x correction): results.csv at full
precision, paper-style Markdown / LaTeX (methods or seeds as rows, test priors as column groups of many / medium /
few / all, "mean ± std" cells, best per column in bold), a long or wide text view, and the accuracy-vs-prior plot."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

GROUPS = ("many", "medium", "few", "all")
ID_COLUMNS = ("checkpoint", "run", "seed", "method")
# metrics where smaller is better (bold marks the minimum of their columns)
LOWER_IS_BETTER = {"ece", "mce", "cw_ece", "nll", "brier", "prior_tv", "prior_js", "spread", "mmacs", "mmacs_all_experts", "experts_mean"}


def write_csv(rows: Iterable[dict[str, Any]] | pd.DataFrame, path: str | Path) -> Path:
    """Tidy rows as CSV at full float precision (columns: the union of keys in first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    frame.to_csv(path, index=False)
    return path


def read_csv(path: str | Path) -> pd.DataFrame:
    """A results.csv (or several concatenated by the caller) as a DataFrame."""
    return pd.read_csv(path)


def row_labels(frame: pd.DataFrame) -> pd.Series:
    """What a table row is: the method, plus the post-hoc correction and aggregation when they are not the defaults."""
    label = frame["method"].astype(str)
    if "posthoc" in frame:
        label = label + frame["posthoc"].map(lambda p: "" if p in ("none", None) or p != p else f" + {p}")
    if "aggregation" in frame:
        label = label + frame["aggregation"].map(lambda a: "" if a in ("mean", None) or a != a else f" + {a}")
    return label


@dataclass
class PaperTable:
    """Means, sample standard deviations and run counts with rows x (column group, metric) columns."""

    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    caption: str = ""


def paper_table(frame: pd.DataFrame, metrics: Sequence[str] = GROUPS, column_key: str | None = "prior",
                column_order: Sequence[str] | None = None, rows: str | None = None, caption: str = "") -> PaperTable:
    """Aggregate tidy results: one row per method (several methods) or per seed run (one method, with a
    'mean ± std' row), column groups from ``column_key`` (e.g. the test priors, in ``column_order``) and ``metrics``
    inside each group. Without ``column_key`` the columns are just the metrics (e.g. the uniform test report)."""
    frame = frame.copy()
    frame["row"] = row_labels(frame)
    several_methods = frame["row"].nunique() > 1
    rows = rows or ("row" if several_methods else "run")
    metrics = [m for m in metrics if m in frame.columns]
    keys = [rows] + ([column_key] if column_key else [])
    grouped = frame.groupby(keys, sort=False)[metrics]
    stats = {name: grouped.agg(name) for name in ("mean", "std", "count")}
    if column_key:
        order = list(column_order) if column_order else list(dict.fromkeys(frame[column_key]))
        stats = {k: v.unstack(column_key).swaplevel(0, 1, axis=1).reindex(
            columns=pd.MultiIndex.from_product([order, metrics])) for k, v in stats.items()}
    row_order = list(dict.fromkeys(frame[rows]))
    stats = {k: v.reindex(row_order) for k, v in stats.items()}
    if rows == "run" and len(row_order) > 1:  # seeds as rows, then their mean ± std
        values = frame.groupby(keys, sort=False)[metrics].first()
        if column_key:
            values = values.unstack(column_key).swaplevel(0, 1, axis=1).reindex(columns=stats["mean"].columns)
        summary = {"mean": values.mean(), "std": values.std(ddof=1), "count": values.count()}
        for k in stats:
            stats[k].loc["mean ± std"] = summary[k]
    stats["std"] = stats["std"].where(stats["count"] > 1)
    return PaperTable(stats["mean"], stats["std"], stats["count"], caption)


def _metric_of(column: Any) -> str:
    """The metric name of a (possibly grouped) column."""
    return column[-1] if isinstance(column, tuple) else column


def best_mask(table: PaperTable) -> pd.DataFrame:
    """True at the best mean of every column (maximum, or minimum for LOWER_IS_BETTER metrics); needs 2+ rows."""
    means = table.mean.drop(index="mean ± std", errors="ignore")
    mask = pd.DataFrame(False, index=table.mean.index, columns=table.mean.columns)
    if len(means) < 2:
        return mask
    for column in means.columns:
        values = means[column].dropna()
        if len(values) > 1 and values.nunique() > 1:
            best = values.min() if _metric_of(column) in LOWER_IS_BETTER else values.max()
            mask.loc[values.index[values == best], column] = True
    return mask


def cell(mean: float, std: float, digits: int = 2) -> str:
    """'mean ± std' ('mean' for one run, 'n/a' for a missing value)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def cells(table: PaperTable, digits: int = 2) -> pd.DataFrame:
    """The table's cells as strings."""
    out = table.mean.copy().astype(object)
    for row in table.mean.index:
        for column in table.mean.columns:
            out.loc[row, column] = cell(table.mean.loc[row, column], table.std.loc[row, column], digits)
    return out


def _header_rows(columns: pd.Index) -> list[list[str]]:
    """Column headers: one row (plain metrics) or two rows (group, metric)."""
    if isinstance(columns, pd.MultiIndex):
        return [[str(g) for g, _ in columns], [str(m) for _, m in columns]]
    return [[str(c) for c in columns]]


def to_markdown(table: PaperTable, digits: int = 2, row_title: str = "") -> str:
    """GitHub Markdown; grouped columns get 'group metric' headers; the best cell of each column in bold."""
    text, bold = cells(table, digits), best_mask(table)
    headers = _header_rows(table.mean.columns)
    names = [" ".join(parts) for parts in zip(*headers)] if len(headers) == 2 else headers[0]
    lines = ([f"**{table.caption}**", ""] if table.caption else [])
    lines += ["| " + " | ".join([row_title or "run"] + names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in text.index:
        values = [f"**{v}**" if bold.loc[row, c] else v for c, v in text.loc[row].items()]
        lines.append("| " + " | ".join([str(row)] + values) + " |")
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    return (str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")
            .replace("±", r"$\pm$"))


def to_latex(table: PaperTable, digits: int = 2, row_title: str = "") -> str:
    """A booktabs table: test priors as \\multicolumn groups over their metrics, best cells in \\textbf."""
    text, bold = cells(table, digits), best_mask(table)
    columns = table.mean.columns
    lines = [r"\begin{table}[t]", r"\centering"]
    if table.caption:
        lines.append(rf"\caption{{{_latex_escape(table.caption)}}}")
    lines += [r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule"]
    if isinstance(columns, pd.MultiIndex):
        groups = list(dict.fromkeys(g for g, _ in columns))
        spans = [sum(1 for g2, _ in columns if g2 == g) for g in groups]
        lines.append(" & " + " & ".join(rf"\multicolumn{{{n}}}{{c}}{{{_latex_escape(g)}}}" for g, n in zip(groups, spans)) + r" \\")
        start, rules = 2, []
        for n in spans:
            rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
            start += n
        lines.append(" ".join(rules))
        lines.append(_latex_escape(row_title or "run") + " & " + " & ".join(_latex_escape(m) for _, m in columns) + r" \\")
    else:
        lines.append(_latex_escape(row_title or "run") + " & " + " & ".join(_latex_escape(c) for c in columns) + r" \\")
    lines.append(r"\midrule")
    for row in text.index:
        if row == "mean ± std":
            lines.append(r"\midrule")
        values = [rf"\textbf{{{_latex_escape(v)}}}" if bold.loc[row, c] else _latex_escape(v) for c, v in text.loc[row].items()]
        lines.append(_latex_escape(row) + " & " + " & ".join(values) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def to_text(table: PaperTable, digits: int = 2) -> str:
    """Aligned plain text for the console."""
    text = cells(table, digits)
    headers = _header_rows(table.mean.columns)
    label_width = max([len(str(r)) for r in text.index] + [3])
    widths = [max(len(v) for v in [*(h[i] for h in headers), *text.iloc[:, i]]) for i in range(text.shape[1])]
    out = [table.caption] if table.caption else []
    for header in headers:
        out.append(" " * label_width + "  " + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in text.index:
        out.append(str(row).ljust(label_width) + "  " + "  ".join(v.rjust(w) for v, w in zip(text.loc[row], widths)))
    return "\n".join(out)


def wide_view(frame: pd.DataFrame, metrics: Sequence[str] = GROUPS, column_key: str = "prior") -> pd.DataFrame:
    """One row per run (and correction), columns (column_key value, metric): every number, nothing aggregated."""
    index = ["run"] + [k for k in ("posthoc", "aggregation") if k in frame]
    return frame.pivot_table(index=index, columns=column_key, values=[m for m in metrics if m in frame],
                             sort=False).swaplevel(0, 1, axis=1)


def plot_priors(frame: pd.DataFrame, priors: Sequence[str], path: str | Path, value_key: str = "all",
                title: str = "") -> Path:
    """PNG of accuracy versus test prior: one mean line with a ± std band per table row (method / correction);
    ``title`` names what is compared (e.g. every method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame.copy()
    frame["series"] = row_labels(frame)
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = list(range(len(priors)))
    for name, subset in frame.groupby("series", sort=False):
        stats = subset.groupby("prior")[value_key].agg(["mean", "std"]).reindex(priors)
        std = stats["std"].fillna(0.0)
        ax.plot(xs, stats["mean"], marker="o", label=str(name))
        ax.fill_between(xs, stats["mean"] - std, stats["mean"] + std, alpha=0.25)
    runs = frame["run"].nunique()
    ax.set_xticks(xs)
    ax.set_xticklabels(priors, rotation=45, ha="right")
    ax.set_ylabel(f"{value_key} accuracy (%)")
    ax.set_xlabel("test class prior")
    summary = f"accuracy vs test prior (mean ± std over {runs} run{'s' * (runs > 1)})"
    ax.set_title(f"{title}: {summary}" if title else summary, fontsize=10, wrap=True)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write a matplotlib figure (parent folders created) and close it, so that long evaluations never pile figures up."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
