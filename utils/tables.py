"""Result tables: tidy long-form CSV, per-seed rows + mean/std, rendered as text, Markdown, LaTeX and a PNG plot."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from utils.metrics import mean_std


def fmt(value: Any, digits: int = 2) -> str:
    """Format a table cell: numbers with fixed digits, nan as 'n/a'."""
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def mean_std_cell(rows: Sequence[dict[str, Any]], key: str, **where: Any) -> str:
    """'mean ± std' of ``key`` over the rows whose fields equal ``where`` ('' when none match): summary-table cells."""
    values = [r[key] for r in rows if all(str(r.get(k)) == str(v) for k, v in where.items())]
    if not values:
        return ""
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write tidy rows (one per checkpoint x condition); columns are the union of keys in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (fmt(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read a tidy CSV back, converting numeric cells to float ('n/a' -> nan)."""
    rows = []
    with Path(path).open() as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                try:
                    parsed[key] = float("nan") if value == "n/a" else float(value)
                except (TypeError, ValueError):
                    parsed[key] = value
            rows.append(parsed)
    return rows


def seed_table(rows: Sequence[dict[str, Any]], column_key: str, columns: Sequence[str], value_key: str,
               run_key: str = "run", group_key: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Pivot tidy rows into one row per run plus 'mean' and 'std' rows (columns = values of ``column_key``).

    With ``group_key`` (e.g. the method) and several groups, each group gets its own '<group> mean/std' rows.
    """
    cell = {(row[run_key], row[column_key]): row[value_key] for row in rows}
    groups: dict[Any, list[str]] = {}
    for row in rows:
        runs = groups.setdefault(row.get(group_key) if group_key else None, [])
        if row[run_key] not in runs:
            runs.append(row[run_key])
    body: list[list[Any]] = []
    for group, runs in groups.items():
        body += [[run] + [cell.get((run, col), float("nan")) for col in columns] for run in runs]
        if len(runs) > 1:
            prefix = f"{group} " if len(groups) > 1 else ""
            stats = [mean_std([cell.get((run, col), float("nan")) for run in runs]) for col in columns]
            body.append([f"{prefix}mean"] + [m for m, _ in stats])
            body.append([f"{prefix}std"] + [s for _, s in stats])
    return [run_key] + list(columns), body


def wide_table(rows: Sequence[dict[str, Any]], index_key: str, value_keys: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    """One row per distinct ``index_key`` value with the given value columns (single-run layout)."""
    return [index_key] + list(value_keys), [[row[index_key]] + [row.get(k, float("nan")) for k in value_keys] for row in rows]


def render(header: Sequence[str], body: Iterable[Sequence[Any]], style: str = "text", caption: str = "") -> str:
    """Render a table as aligned text, GitHub Markdown or a LaTeX tabular."""
    cells = [[fmt(v) for v in row] for row in body]
    header = [str(h) for h in header]
    if style == "latex":
        escape = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$")  # noqa: E731
        lines = [r"\begin{table}[t]", r"\centering"]
        if caption:
            lines.append(rf"\caption{{{escape(caption)}}}")
        lines += [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
                  " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
        for row in cells:
            if row[0].endswith("mean"):
                lines.append(r"\midrule")
            lines.append(" & ".join(escape(c) for c in row) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines)
    widths = [max(len(header[i]), *(len(r[i]) for r in cells)) if cells else len(header[i]) for i in range(len(header))]
    if style == "markdown":
        out = ([f"**{caption}**", ""] if caption else []) + [
            "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
            "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|",
        ]
        out += ["| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |" for row in cells]
        return "\n".join(out)
    out = ([caption] if caption else []) + ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join(out)


def plot_priors(rows: Sequence[dict[str, Any]], priors: Sequence[str], path: str | Path, value_key: str = "all",
                series_key: str = "posthoc", run_key: str = "run", title: str = "") -> Path:
    """PNG of accuracy versus test prior: mean line with a +-std band per series (e.g. with/without correction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = []
    for row in rows:
        if row.get(series_key) not in series:
            series.append(row.get(series_key))
    xs = list(range(len(priors)))
    for name in series:
        subset = [r for r in rows if r.get(series_key) == name]
        stats = [mean_std([r[value_key] for r in subset if r["prior"] == p]) for p in priors]
        means = [m for m, _ in stats]
        stds = [s if not math.isnan(s) else 0.0 for _, s in stats]
        label = {True: "posthoc correction", False: "no correction", None: value_key, "none": "no correction",
                 "oracle": "oracle prior correction", "estimate": "estimated prior correction"}.get(name, str(name))
        ax.plot(xs, means, marker="o", label=label)
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.25)
    n_runs = len({r[run_key] for r in rows})
    ax.set_xticks(xs)
    ax.set_xticklabels(priors, rotation=45, ha="right")
    ax.set_ylabel(f"{value_key} accuracy (%)")
    ax.set_xlabel("test class prior")
    ax.set_title(title or f"accuracy vs test prior (mean ± std over {n_runs} run{'s' * (n_runs > 1)})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
