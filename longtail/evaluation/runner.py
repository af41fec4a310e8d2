"""The evaluation of checkpoints behind test.py and test_all_*.py: checkpoints -> logits once -> rows, tables, files.

Command-line parsing lives in longtail/cli/evaluate.py; this module takes an :class:`EvalOptions`.
"""
from __future__ import annotations

import glob
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
import torch.nn as nn

from longtail.core.build import build_model, input_channels, load_weights, model_from_checkpoint, resolve
from longtail.core.hooks import procedure_settings
from longtail.core.logits import collect_logits, masks_for
from longtail.data_loader.factory import DataBundle, build_data, split_loader_args, training_counts
from longtail.data_loader.profiles import CIFAR_TEST_PRIORS, DATASET_PRIORS, parse_test_prior
from longtail.evaluation.hooks import AggregationContext, ForeignWeights, PosthocContext
from longtail.evaluation.report import prior_reports, uniform_report
from longtail.registry import AGGREGATIONS, CHECKPOINT_READERS, POSTHOC, REPORTERS
from longtail.utils.checkpoint import load_checkpoint, run_status
from longtail.utils.config import apply_overrides, config_stem, load_config
from longtail.utils.defaults import RESULTS_DIR
from longtail.utils.device import resolve_device
from longtail.utils.errors import CheckpointError
from longtail.utils.tables import (
    GROUPS,
    PaperTable,
    paper_table,
    plot_priors,
    to_latex,
    to_markdown,
    to_text,
    wide_view,
    write_csv,
)


@dataclass
class LoadedRun:
    """A checkpoint ready for evaluation."""

    path: Path
    config: dict[str, Any]
    model: nn.Module
    cls_num_list: list[int]
    label: str = ""
    status: str = "finished"  # utils.checkpoint.run_status: finished | snapshot: ... | unfinished: ... | external

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclass
class EvalOptions:
    """What to evaluate and how (the parsed command line of test.py / test_all_*.py, or an API call)."""

    checkpoints: Sequence[str]
    device: str | None = None
    overrides: list[tuple[str, Any]] = field(default_factory=list)  # (dotted key, value) applied to each config
    out: str | None = None
    priors: Sequence[str] = ()
    posthoc: Sequence[str] = ("none",)
    aggregation: str = "mean"
    quiet: bool = False
    format: str = "paper"  # console layout: paper | long | wide
    auto_out: bool = True  # several checkpoints without ``out``: write the files to results/<name>-<time>/
    config: str | None = None  # a config file: replaces the checkpoint's sections; required for original checkpoints
    include_unfinished: bool = False  # evaluate runs whose training did not finish (marked in the results)
    latest: bool = False  # of several runs of one config and seed, keep the most recent instead of failing
    groups: bool = False  # console table of test_all: many/medium/few/all per prior instead of all only


def _checkpoints_in(path: Path) -> list[Path]:
    """A checkpoint file, a run directory (its last.pth) or a folder of runs (every run's last.pth)."""
    if path.is_file():
        return [path]
    if (path / "last.pth").is_file():
        return [path / "last.pth"]
    if path.is_dir():
        runs = sorted(p / "last.pth" for p in path.iterdir() if (p / "last.pth").is_file())
        if runs:
            return runs
        raise CheckpointError(f"{path} holds neither last.pth nor run folders with a last.pth")
    raise CheckpointError(f"checkpoint not found: {path}")


def expand_checkpoints(patterns: Sequence[str]) -> list[Path]:
    """Paths, shell globs (quoted), run directories (-> their last.pth) or folders of runs, in order, no duplicates."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not matches:
            raise CheckpointError(f"no checkpoint matches {pattern!r}")
        for match in matches:
            for path in _checkpoints_in(Path(match)):
                if path not in found:
                    found.append(path)
    return found


class TestData:
    """Builds each distinct test set once, even when many checkpoints share it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._cache: dict[str, DataBundle] = {}

    def get(self, config: dict[str, Any]) -> DataBundle:
        """The test side of the data set described by ``config``."""
        dataset_args, _ = split_loader_args(config["data_loader"])
        key = json.dumps([config["data_loader"].get("type"), dataset_args, config["evaluation"]], sort_keys=True)
        if key not in self._cache:
            self._cache[key] = build_data(config, self.device, train=False)
        return self._cache[key]


def read_checkpoint(path: Path) -> tuple[dict[str, Any] | None, ForeignWeights | None]:
    """(state, None) for this framework's checkpoints; (None, weights) for a checkpoint of another code base that a
    registered reader (CHECKPOINT_READERS) recognises, read without unpickling its objects."""
    try:
        return load_checkpoint(path), None
    except CheckpointError as exc:
        for _name, reader in CHECKPOINT_READERS.items():
            foreign = reader(path)
            if foreign is not None:
                return None, foreign
        raise exc from None


def foreign_run(path: Path, foreign: ForeignWeights, config_path: str | None,
                overrides: Sequence[tuple[str, Any]]) -> tuple[nn.Module, dict[str, Any], list[int]]:
    """Model, config and training counts for another code base's checkpoint, with a config of this framework that
    describes the same architecture and data set (-c)."""
    if config_path is None:
        raise CheckpointError(f"{path} is {foreign.description}; evaluate it with -c CONFIG, a config of this framework "
                              "with the same architecture and data set (configs/<data set>/<method>.json)")
    config = resolve(apply_overrides(load_config(config_path), overrides))
    counts = training_counts(config)
    model = build_model(config, len(counts), input_channels(config), counts)
    load_weights(model, foreign.convert(model), str(path))
    print(f"{path}: {foreign.description}", file=sys.stderr)
    return model.eval(), config, counts


@dataclass
class CheckpointFile:
    """A checkpoint read from disk, with how far its training got."""

    path: Path
    state: dict[str, Any] | None
    foreign: ForeignWeights | None
    status: str

    @property
    def key(self) -> tuple[str, int] | None:
        """(config name, seed): two files with one key are two runs of the same experiment."""
        if self.state is None:
            return None
        return str(self.state["config"].get("name")), int(self.state["config"].get("seed", 0))


def read_checkpoint_file(path: Path) -> CheckpointFile:
    """Read a checkpoint (this framework's or another code base's) and its run status."""
    state, foreign = read_checkpoint(path)
    return CheckpointFile(path, state, foreign, run_status(state, path))


def select_checkpoints(files: list[CheckpointFile], include_unfinished: bool = False,
                       latest: bool = False) -> list[CheckpointFile]:
    """The checkpoints a table may aggregate: unfinished runs only on request (one checkpoint alone is reported,
    marked), and never two runs of one config and seed (``latest`` keeps the most recently written one)."""
    unfinished = [f for f in files if f.status.startswith("unfinished")]
    if unfinished and len(files) > 1 and not include_unfinished:
        listing = "; ".join(f"{f.path} ({f.status})" for f in unfinished)
        raise CheckpointError(f"refusing to aggregate runs whose training did not finish: {listing}. Finish them "
                              "(python train.py -r FILE), leave them out, or pass --include_unfinished to report them "
                              "marked as unfinished")
    groups: dict[tuple[str, int], list[CheckpointFile]] = {}
    for f in files:
        if f.key is not None:
            groups.setdefault(f.key, []).append(f)
    duplicates = {key: group for key, group in groups.items() if len(group) > 1}
    if duplicates and not latest:
        listing = "; ".join(f"{name} seed {seed}: {', '.join(str(f.path) for f in group)}"
                            for (name, seed), group in duplicates.items())
        raise CheckpointError(f"several runs of the same config and seed would be averaged as one seed: {listing}. "
                              "Pass only the one you mean, or add --latest to keep the most recently written run of "
                              "each seed")
    skipped = {id(f) for group in duplicates.values()
               for f in sorted(group, key=lambda f: f.path.stat().st_mtime)[:-1]}
    for group in duplicates.values():
        kept = max(group, key=lambda f: f.path.stat().st_mtime)
        print(f"--latest: {kept.path} kept; skipped the older run(s) of the same config and seed: "
              f"{', '.join(str(f.path) for f in group if f is not kept)}", file=sys.stderr)
    for f in unfinished:
        print(f"warning: {f.path} is {f.status}; its rows are marked in the 'status' column", file=sys.stderr)
    return [f for f in files if id(f) not in skipped]


def load_run(file: CheckpointFile, device: torch.device, overrides: Sequence[tuple[str, Any]] = (),
             config_path: str | None = None) -> LoadedRun:
    """Rebuild a checkpoint's model from its own config and stored class counts (or, for another code base's
    checkpoint, from the config ``config_path``), load the weights (strict), move it to ``device`` in eval mode."""
    path, state, foreign = file.path, file.state, file.foreign
    if foreign is None:
        if config_path is not None:  # as when resuming: the given file replaces whole top-level sections
            state = {**state, "config": {**state["config"], **load_config(config_path)}}
        model, config = model_from_checkpoint(state, str(path), overrides)
        counts = list(state["cls_num_list"])
    else:
        model, config, counts = foreign_run(path, foreign, config_path, overrides)
    model = model.to(device)
    if config["trainer"].get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(path, config, model.eval(), counts, status=file.status)


def prepare(file: CheckpointFile, device: torch.device, test_data: TestData, overrides: Sequence[tuple[str, Any]],
            config_path: str | None = None) -> tuple[LoadedRun, DataBundle]:
    """:func:`load_run` plus the run's test data (built once per distinct test set)."""
    run = load_run(file, device, overrides, config_path)
    return run, test_data.get(run.config)


def label_runs(runs: Sequence[LoadedRun]) -> None:
    """'seed<N>', prefixed by the config name when runs of several configs are compared, plus the run folder
    when two runs would otherwise share a label."""
    several_configs = len({r.config["name"] for r in runs}) > 1
    labels = [f"{r.config['name']}/seed{r.seed}" if several_configs else f"seed{r.seed}" for r in runs]
    for run, label in zip(runs, labels):
        run.label = label if labels.count(label) == 1 else f"{label}:{run.path.parent.name}"
        if run.status.startswith("unfinished"):
            run.label += " [unfinished]"


def _out_dir(options: EvalOptions, runs: Sequence[LoadedRun], script: str) -> Path | None:
    """Where result files go: --out, or an automatic folder when several checkpoints are evaluated."""
    if options.out:
        return Path(options.out)
    if len(runs) > 1 and options.auto_out:
        return Path(RESULTS_DIR) / f"{config_stem(runs[0].config['name'])}-{script}-{datetime.now():%Y%m%d-%H%M%S}"
    return None


def _write(out_dir: Path | None, results: pd.DataFrame, tables: list[PaperTable], quiet: bool) -> None:
    """results.csv (tidy, full precision), results.md and results.tex (the paper-style tables)."""
    if out_dir is None:
        return
    write_csv(results, out_dir / "results.csv")
    (out_dir / "results.md").write_text("\n\n".join(to_markdown(t) for t in tables) + "\n")
    (out_dir / "results.tex").write_text("\n\n".join(to_latex(t) for t in tables) + "\n")
    if not quiet:
        print(f"\nwrote {out_dir}/results.csv, results.md, results.tex")


def show(results: pd.DataFrame, tables: list[PaperTable], fmt: str, metrics: Sequence[str], column_key: str | None) -> None:
    """Print the results in the requested layout: paper tables, the tidy long table, or one row per run."""
    with pd.option_context("display.width", 250, "display.max_columns", 200, "display.max_rows", 500):
        if fmt == "long":
            print(results.drop(columns=["checkpoint"]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        elif fmt == "wide" and column_key:
            print(wide_view(results, metrics, column_key).to_string(float_format=lambda v: f"{v:.2f}"))
        else:
            print("\n\n".join(to_text(t) for t in tables))


def load_runs(options: EvalOptions) -> list[tuple[LoadedRun, DataBundle]]:
    """Resolve the device and load every requested checkpoint with its test data."""
    device = resolve_device(options.device)
    test_data = TestData(device)
    files = [read_checkpoint_file(path) for path in expand_checkpoints(options.checkpoints)]
    files = select_checkpoints(files, options.include_unfinished, options.latest)
    loaded = [prepare(f, device, test_data, options.overrides, options.config) for f in files]
    label_runs([run for run, _ in loaded])
    return loaded


def _base_row(run: LoadedRun) -> dict[str, Any]:
    """Identification columns of a result row."""
    return {"checkpoint": str(run.path), "run": run.label, "seed": run.seed, "method": run.config["name"],
            "status": run.status}


UNIFORM_COLUMNS = list(GROUPS) + ["ece", "mce", "nll", "brier"]


def evaluate_uniform(options: EvalOptions) -> pd.DataFrame:
    """Uniform test set: top-1, many/medium/few, ECE/MCE (15 bins), NLL, Brier, per-expert top-1, plus the columns
    of every registered reporter (e.g. a router's experts used and expected compute). One row per checkpoint."""
    loaded = load_runs(options)
    rows, captions = [], []
    for run, data in loaded:
        extras: dict[str, torch.Tensor] = {}
        expert_logits, targets = collect_logits(run.model, data.test_loader, run.config["trainer"].get("amp", "off"), extras)
        masks = masks_for(run.cls_num_list, run.config["evaluation"])
        report = uniform_report(expert_logits, targets, masks)
        for name, reporter in REPORTERS.items():
            columns = reporter(run, extras, targets, masks, data.test_set.image_shape)
            if columns:
                report.update(columns)
                caption = getattr(reporter, "caption", "")
                if caption and caption not in captions:
                    captions.append(caption)
        rows.append({**_base_row(run), "prior": "uniform", **report})
    results = pd.DataFrame(rows)
    experts = sorted((k for k in results if k.startswith("expert") and k[len("expert"):].isdigit()),
                     key=lambda k: int(k[len("expert"):]))
    extra = [k for k in results if k not in UNIFORM_COLUMNS + experts + ["checkpoint", "run", "seed", "method", "prior",
                                                                         "status"]]
    columns = UNIFORM_COLUMNS + experts + extra
    caption = "; ".join(["uniform test set: top-1 (%) all/many/medium/few, ECE/MCE (%), NLL, Brier, per-expert top-1 (%)"]
                        + captions)
    tables = [paper_table(results, columns, column_key=None, caption=caption)]
    if not options.quiet:
        show(results, tables, options.format, columns, None)
    _write(_out_dir(options, [r for r, _ in loaded], "test"), results, tables, options.quiet)
    return results


def posthoc_caption(mode: str) -> str:
    """Caption suffix of a table corrected with ``mode`` (the correction's ``caption`` attribute)."""
    return "" if mode == "none" else getattr(POSTHOC.get(mode), "caption", f" with posthoc correction '{mode}'")


def prior_tables(results: pd.DataFrame, priors: Sequence[str], metrics: Sequence[str] = GROUPS) -> list[PaperTable]:
    """The paper table (priors as column groups of many/medium/few/all) plus one for each extra column
    (the EM estimate's prior_tv, test-time aggregation weights w0..)."""
    modes = [posthoc_caption(m).strip() for m in dict.fromkeys(results["posthoc"]) if m != "none"]
    caption = "test-agnostic evaluation: top-1 (%) per test prior" + (f"; {'; '.join(modes)}" if modes else "")
    tables = [paper_table(results, metrics, "prior", priors, caption=caption)]
    extra = [k for k in results if k == "prior_tv" or (k.startswith("w") and k[1:].isdigit())]
    if extra:
        tables.append(paper_table(results.dropna(subset=extra, how="all"), extra, "prior", priors,
                                  caption=", ".join(extra) + " per test prior"))
    return tables


def check_prior_options(options: EvalOptions) -> None:
    """Prior names, corrections and the aggregation are checked before any checkpoint is loaded."""
    for prior in options.priors:
        parse_test_prior(prior)
    for mode in options.posthoc:
        POSTHOC.get(mode, where="--posthoc_bias_correction")
    AGGREGATIONS.get(options.aggregation, where="--aggregation")


def evaluate_priors(options: EvalOptions) -> pd.DataFrame:
    """Every test prior from one set of logits per checkpoint; optional test-time aggregation and post-hoc correction.
    One row per checkpoint x prior x correction."""
    check_prior_options(options)
    aggregate = AGGREGATIONS.get(options.aggregation)
    loaded = load_runs(options)
    priors = list(options.priors) or default_priors(loaded[0][0].config)
    rows: list[dict[str, Any]] = []
    for run, data in loaded:
        expert_logits, targets = collect_logits(run.model, data.test_loader, run.config["trainer"].get("amp", "off"))
        subsets = {p: data.test_set.test_prior_indices(p, run.cls_num_list) for p in priors}
        masks = masks_for(run.cls_num_list, run.config["evaluation"])
        settings = procedure_settings(options.aggregation, run.config["evaluation"])
        weights = aggregate(AggregationContext(run, data, subsets, expert_logits, targets, settings))
        context = PosthocContext(run.cls_num_list, run.config["evaluation"])
        base = {**_base_row(run), "aggregation": options.aggregation}
        rows += [{**base, **r} for r in prior_reports(expert_logits, targets, subsets, masks, options.posthoc, weights, context)]
    results = pd.DataFrame(rows)
    # the protocol's order (forward50 ... backward50), kept by sorting, pivot_table and groupby
    results["prior"] = pd.Categorical(results["prior"], categories=list(dict.fromkeys(priors)), ordered=True)
    tables = prior_tables(results, priors)
    if not options.quiet:
        console = tables if options.groups else prior_tables(results, priors, metrics=["all"])
        show(results, console, options.format, GROUPS if options.groups else ["all"], "prior")
    out_dir = _out_dir(options, [r for r, _ in loaded], "test_all")
    _write(out_dir, results, tables, options.quiet)
    if out_dir is not None:
        methods = ", ".join(dict.fromkeys(run.config["name"] for run, _ in loaded))
        plot = plot_priors(results, priors, out_dir / "accuracy_vs_prior.png", title=methods)
        if not options.quiet:
            print(f"wrote {plot}")
    return results


def default_priors(config: dict[str, Any]) -> list[str]:
    """The test priors of the configured data set's protocol (CIFAR-style 11 priors unless it has its own list)."""
    return list(DATASET_PRIORS.get(config["data_loader"].get("type"), CIFAR_TEST_PRIORS))
