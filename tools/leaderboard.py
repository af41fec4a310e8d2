"""The README's leaderboard: every shipped config with the paper's number, this code's number and the expected
training time, from committed data only.

python -m tools.leaderboard [--paper docs/leaderboard/paper_numbers.json] [--timings docs/leaderboard/timings_*.json]
                            [--results docs/results/pipelines]

* paper numbers: a JSON file keyed by config path (``top1``, ``source``: the table it comes from);
* this code's numbers: ``<results>/<pipeline name>.csv``, the ``results.csv`` that ``longtail/cli/pipeline.py --evaluate``
  wrote for each pipeline of ``configs/pipelines/`` (uniform test report, mean ± std over seeds);
* expected time: ``python -m tools.benchmark ... --record FILE`` records (the measured training and evaluation rates
  times the config's whole schedule), one column per device kind (CPU, GPU).

Prints one Markdown table per config folder (data set); tools/readme.py pastes it into the README.
"""
from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from longtail.pipeline import load_pipeline, stage_key
from longtail.cli.common import run_tool
from longtail.core.build import resolve
from longtail.utils.config import apply_overrides, load_config, load_json
from longtail.utils.errors import DataError
from longtail.utils.tables import cell, read_csv

NOT_MEASURED = "not measured"


@dataclass
class Row:
    """One leaderboard row: a shipped config, or a pipeline stage's variant of one (``--set`` overrides)."""

    key: str
    folder: str
    backbone: str
    epochs: str
    paper: str = "–"
    source: str = ""
    ours: str = "–"
    times: dict[str, str] = field(default_factory=dict)


def shipped_configs(root: Path) -> list[Path]:
    """Every runnable config: configs/<folder>/*.json except the shared parts (_base_) and pipeline files."""
    return sorted(p for p in (root / "configs").glob("*/*.json") if p.parent.name not in ("_base_", "pipelines", "sweeps"))


def describe(config: dict[str, Any]) -> tuple[str, str]:
    """(backbone with its expert count, epochs or the non-SGD stage's name) of a resolved config."""
    arch = config["arch"]
    experts = int(arch.get("args", {}).get("num_experts", 1))
    backbone = arch["type"] + (f" ×{experts}" if experts > 1 else "")
    stage = config.get("stage", {})
    stage_type = stage.get("type", "sgd") if isinstance(stage, dict) else str(stage)
    epochs = str(config["trainer"]["epochs"]) if stage_type == "sgd" else f"({stage_type})"
    return backbone, epochs


def format_hours(hours: float) -> str:
    """A duration for humans: minutes below 1 h, hours below 48 h, then days."""
    if hours < 1:
        return f"{max(1, round(hours * 60))} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} days"


def read_timings(patterns: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Benchmark records by device kind (``cpu``/``cuda``) and config key."""
    timings: dict[str, dict[str, dict[str, Any]]] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)) or [pattern]:
            if not Path(path).is_file():
                raise DataError(f"timing record not found: {path} (written by python -m tools.benchmark --record)")
            for key, record in load_json(path)["configs"].items():
                timings.setdefault(record["device"], {})[key] = record
    return timings


def time_cell(record: dict[str, Any] | None, epochs: int | None = None) -> str:
    """The expected wall time of a config's whole schedule from its benchmark record; a record taken for another
    number of epochs than the config now has is shown as stale rather than as a wrong time."""
    if record is None:
        return NOT_MEASURED
    if not record.get("training", True):
        return "no SGD (one pass)"
    if epochs is not None and record.get("epochs") not in (None, epochs):
        return f"stale: benchmarked for {record['epochs']} epochs, re-run its --record command"
    return format_hours(float(record["schedule_hours"]))


def uniform_results(results_dir: Path, pipelines: Sequence[Path], root: Path) -> dict[str, str]:
    """This code's uniform top-1 per config key (mean ± std over the seeds and their count), from each pipeline's
    committed results csv (rows ``evaluation == test``, no post-hoc correction)."""
    numbers: dict[str, str] = {}
    for path in pipelines:
        pipeline = load_pipeline(path)
        csv = results_dir / f"{pipeline.name}.csv"
        if not csv.is_file():
            continue
        frame = read_csv(csv)
        frame = frame[frame["evaluation"] == "test"]
        stages = {stage.name: stage for stage in pipeline.stages}
        for spec in pipeline.evaluate:
            rows = frame[frame["method"] == spec.label]["all"]
            key = stage_key(stages[spec.stage], root)
            if len(rows) and key not in numbers:
                std = rows.std(ddof=1) if len(rows) > 1 else float("nan")
                numbers[key] = f"{cell(rows.mean(), std)} ({len(rows)} seeds)"
    return numbers


def pipeline_variants(pipelines: Sequence[Path], root: Path, shipped: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Pipeline stages that run a shipped config with overrides (e.g. RIDE's 6-expert teacher): extra rows."""
    variants = []
    for path in pipelines:
        for stage in load_pipeline(path).stages:
            key = stage_key(stage, root)
            if stage.set and key not in shipped and key not in [k for k, _ in variants]:
                variants.append((key, resolve(apply_overrides(load_config(stage.config), stage.set.items()))))
    return variants


def build_rows(root: Path, paper: dict[str, Any], timings: dict[str, dict[str, dict[str, Any]]],
               results_dir: Path) -> list[Row]:
    """Every shipped config (and pipeline variant) with its numbers."""
    pipelines = sorted((root / "configs" / "pipelines").glob("*.json"))
    ours = uniform_results(results_dir, pipelines, root)
    configs = [(str(p.relative_to(root)), resolve(load_config(p))) for p in shipped_configs(root)]
    configs += pipeline_variants(pipelines, root, {k for k, _ in configs})
    rows = []
    for key, config in configs:
        backbone, epochs = describe(config)
        entry = paper.get(key, {})
        row = Row(key, Path(key.split(" ")[0]).parent.name, backbone, epochs, entry.get("top1", "–"),
                  entry.get("source", ""), ours.get(key, "–"))
        row.times = {device: time_cell(records.get(key), config["trainer"].get("epochs"))
                     for device, records in timings.items()}
        rows.append(row)
    return sorted(rows, key=lambda r: (r.folder, r.key.split(" ")[0], " --set " in r.key, r.key))


def render(rows: Sequence[Row], devices: dict[str, str]) -> str:
    """One Markdown table per config folder."""
    out = []
    for folder in dict.fromkeys(r.folder for r in rows):
        header = ["config", "backbone", "epochs", "paper top-1", "paper source", "this code (uniform top-1)",
                  *devices.values()]
        lines = [f"**{folder}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in (r for r in rows if r.folder == folder):
            label = Path(r.key.split(" ")[0]).name + (" " + " ".join(r.key.split(" ")[1:]) if " " in r.key else "")
            cells = [f"`{label}`", r.backbone, r.epochs, r.paper, r.source, r.ours,
                     *(r.times.get(device, NOT_MEASURED) for device in devices)]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def device_columns(timings: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    """Column titles of the expected-time columns: one per device kind, naming the machine measured (a GPU column
    always exists and says 'not measured' until a record for it is added)."""
    columns = {}
    for device in ("cpu", "cuda"):
        records = list(timings.get(device, {}).values())
        if device == "cpu":
            threads = {r.get("threads") for r in records}
            title = f"time, {'/'.join(str(t) for t in sorted(threads))} CPU threads" if records else "time, CPU"
        else:
            machines = sorted({r.get("machine", "GPU") for r in records})
            title = f"time, 1 {'/'.join(machines)}" if records else "time, 1 GPU"
        columns[device] = title
    return columns


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="Print the leaderboard of every shipped config (Markdown).")
    p.add_argument("--root", default=".", help="repository root (default: the working directory)")
    p.add_argument("--paper", default="docs/leaderboard/paper_numbers.json")
    p.add_argument("--timings", nargs="+", default=["docs/leaderboard/timings_*.json"],
                   help="tools.benchmark --record files (globs allowed)")
    p.add_argument("--results", default="docs/results/pipelines",
                   help="folder of <pipeline name>.csv files (each pipeline's results.csv)")
    return p


def run(args: argparse.Namespace) -> int:
    """Collect and print."""
    root = Path(args.root)
    paper = {k: v for k, v in load_json(root / args.paper).items() if not k.startswith("_")}
    timings = read_timings([str(root / t) for t in args.timings])
    rows = build_rows(root, paper, timings, root / args.results)
    unknown = sorted(set(paper) - {r.key for r in rows})
    if unknown:
        raise DataError(f"{args.paper} names configs that are not shipped: {', '.join(unknown)}")
    print(render(rows, device_columns(timings)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tools.leaderboard``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
