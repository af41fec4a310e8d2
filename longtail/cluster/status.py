"""A sweep's status (every job: pending, running, done, failed..., with the last line of its log) and, once every job
is done, its one paper-style table: one row per method (and post-hoc correction), mean ± std over the seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from longtail.cluster.jobs import read_record
from longtail.cluster.launchers import launcher_of, log_path, read_submissions
from longtail.cluster.sweep import Sweep, job_graph
from longtail.pipeline import SeedState
from longtail.utils.errors import DataError
from longtail.utils.tables import PaperTable, paper_table, read_csv, to_markdown, to_text, write_csv

TABLE_FILE, RESULTS_FILE = "table.md", "results.csv"


def last_line(path: Path | None) -> str:
    """The last non-empty line of a text file ('' when there is none); progress-bar carriage returns count as line
    ends."""
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 8192))
        text = handle.read().decode(errors="replace")
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def job_logs(sweep: Sweep, key: str) -> list[Path]:
    """A job's own output files: the local log, or SLURM's stderr and stdout of its latest job id."""
    job_id = read_submissions(sweep).get("jobs", {}).get(key) or read_record(sweep.folder, key).get("slurm_job_id")
    logs = [log_path(sweep, key)]
    if job_id:
        folder = Path(sweep.folder) / "slurm" / str(job_id)
        logs += [folder / f"{job_id}_0_log.err", folder / f"{job_id}_0_log.out"]
    return [p for p in logs if p.is_file()]


def job_output(sweep: Sweep, key: str, failed: bool) -> str:
    """The last line of the job's own output: its error stream first for a failed job, its standard output first
    for the others."""
    logs = sorted(job_logs(sweep, key), key=lambda p: p.suffix == (".out" if failed else ".err"))
    return next((line for line in map(last_line, logs) if line), "")


def train_log(sweep: Sweep, key: str) -> Path | None:
    """The train.log of a stage job's run directory (recorded in the variant's seed state)."""
    variant, _, rest = key.partition("/")
    seed, _, stage = rest.partition("/")
    if not seed.startswith("seed") or not stage:
        return None
    record = SeedState(Path(sweep.variant(variant).folder), int(seed[4:])).stages.get(stage)
    return Path(record["run_dir"]) / "train.log" if record else None


def status_frame(sweep: Sweep) -> pd.DataFrame:
    """One row per job: key, state, SLURM job id, and the last line of its log (the error of a failed job)."""
    keys = [job.key for job in job_graph(sweep)]
    states = launcher_of(sweep).states(sweep, keys)
    ids = read_submissions(sweep).get("jobs", {})
    rows = []
    for key in keys:
        record, state = read_record(sweep.folder, key), states[key]
        if state.startswith(("failed", "cancelled")):
            line = record.get("error") or job_output(sweep, key, failed=True)
        else:
            line = last_line(train_log(sweep, key)) or job_output(sweep, key, failed=False)
        rows.append({"job": key, "state": state, "slurm_id": ids.get(key, ""), "last line": line})
    return pd.DataFrame(rows)


def status_text(frame: pd.DataFrame, width: int = 100) -> str:
    """The status rows as aligned text, plus a count per state."""
    key_width = max(len(k) for k in frame["job"])
    state_width = max(len(s) for s in frame["state"])
    lines = [f"{'job'.ljust(key_width)}  {'state'.ljust(state_width)}  {'slurm id':>8}  last line of its log"]
    for row in frame.itertuples(index=False):
        text = row[3][: width] + ("..." if len(row[3]) > width else "")
        lines.append(f"{row[0].ljust(key_width)}  {row[1].ljust(state_width)}  {row[2]:>8}  {text}")
    counts = frame["state"].str.split(" ").str[0].value_counts()
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)


def sweep_results(sweep: Sweep) -> pd.DataFrame:
    """Every variant's results.csv (written by its evaluation job), in the sweep's order."""
    frames = []
    for variant in sweep.variants:
        path = Path(variant.folder) / RESULTS_FILE
        if not path.is_file():
            raise DataError(f"{path} not found: the evaluation of {variant.name} has not run (lt-sweep status)")
        frames.append(read_csv(path).assign(variant=variant.name))
    return pd.concat(frames, ignore_index=True)


def sweep_tables(sweep: Sweep, results: pd.DataFrame) -> list[PaperTable]:
    """The sweep's table over the test priors (the sweep file's ``table.priors`` / ``table.metrics``, default every
    prior, metric ``all``) and the uniform test report (many / medium / few / all), mean ± std over seeds."""
    tables = []
    priors = results[results["evaluation"] == "test_all"]
    if not priors.empty:
        order = list(sweep.table.get("priors") or dict.fromkeys(priors["prior"]))
        priors = priors[priors["prior"].isin(order)]
        metrics = list(sweep.table.get("metrics") or ["all"])
        tables.append(paper_table(priors, metrics, "prior", order, caption=f"{sweep.name}: top-1 (%) per test prior, "
                                  f"mean ± std over seeds {', '.join(map(str, sweep.seeds))}"))
    uniform = results[results["evaluation"] == "test"]
    if not uniform.empty:
        tables.append(paper_table(uniform, ["many", "medium", "few", "all"], None,
                                  caption=f"{sweep.name}: uniform test set, top-1 (%), mean ± std over seeds"))
    return tables


def write_table(sweep: Sweep) -> tuple[Path, str]:
    """Write ``<sweep dir>/results.csv`` (every row of every variant) and ``table.md``; returns the table file and
    the tables as console text."""
    results = sweep_results(sweep)
    write_csv(results, Path(sweep.folder) / RESULTS_FILE)
    tables = sweep_tables(sweep, results)
    path = Path(sweep.folder) / TABLE_FILE
    path.write_text("\n\n".join(to_markdown(t, row_title="method") for t in tables) + "\n")
    return path, "\n\n".join(to_text(t) for t in tables)


def all_done(frame: pd.DataFrame) -> bool:
    """Whether every job of the sweep is done."""
    return bool((frame["state"] == "done").all())


def summary(sweep: Sweep) -> dict[str, Any]:
    """Counts per state (for scripts and tests)."""
    frame = status_frame(sweep)
    return frame["state"].str.split(" ").str[0].value_counts().to_dict()
