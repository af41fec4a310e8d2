"""Test-agnostic evaluation under families of shifted test priors, from logits (docs/test_agnostic.md).

Checkpoints -> one :class:`LogitSet` each (a model pass: test logits, held-out logits when the data set has a
held-out split, augmented-view logits when the aggregation can use them) or logits files -> for every protocol
(data_loader/shift_protocols.py) and every test set it draws: the ensemble (plain mean or a test-time aggregation's
weights), every correction (POSTHOC: none, oracle, the estimators of evaluation/estimators.py), accuracy
(all/many/medium/few) and calibration (ECE, classwise ECE, NLL, Brier) -> one tidy row per checkpoint x protocol x
test set x correction; summaries per protocol (mean, worst, spread over test sets, many/medium/few, severity-curve
area); paper tables (mean ± std over seeds); the severity-curve plot and reliability diagrams.

On-the-fly evaluation and evaluation from files run the same code on the same LogitSet, so their numbers are equal
(tests/evaluation/test_saved_logits.py).
"""
from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from longtail.core.hooks import procedure_settings
from longtail.core.logits import collect_logits, masks_for
from longtail.data_loader.factory import build_dataset, split_loader_args
from longtail.data_loader.profiles import CIFAR_TEST_PRIORS
from longtail.data_loader.shift_protocols import PriorPool, ShiftedPrior, draw_protocol, protocol_settings
from longtail.evaluation.hooks import AggregationContext, PosthocContext
from longtail.evaluation.report import ensemble_logits
from longtail.evaluation.runner import EvalOptions, default_priors, load_runs
from longtail.evaluation.saved_logits import (LogitSet, expand_logit_files, labels_digest, load_logits, logit_file_name,
                                              save_logits)
from longtail.registry import AGGREGATIONS, LOADERS, POSTHOC, TEST_PROTOCOLS
from longtail.utils.config import config_stem, set_by_path
from longtail.utils.errors import ConfigError, DataError, DataNotFoundError
from longtail.utils.metrics import (accuracy_report, brier_score, calibration_errors, classwise_calibration_error,
                                    reliability_bins)
from longtail.utils.tables import (GROUPS, PaperTable, paper_table, row_labels, save_figure, to_latex, to_markdown,
                                    to_text, write_csv)

ESTIMATOR_ALIASES = {"em": "estimate"}  # --estimators names -> POSTHOC entries
SUMMARY_KEYS = ["checkpoint", "run", "seed", "method", "aggregation", "posthoc", "protocol"]


@dataclass
class ShiftOptions:
    """What the shifted-prior evaluation adds to :class:`EvalOptions` (the command line's --protocol, --estimators,
    --protocol_set, --protocol_seed, --logits, --save_logits, --logits_dtype)."""

    protocols: list[str] = field(default_factory=lambda: ["fixed"])
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    estimators: list[str] = field(default_factory=list)
    seed: int = 0
    logit_files: list[str] = field(default_factory=list)
    save_logits: str | None = None
    logits_dtype: str = "float32"
    reliability: bool = True


def estimator_corrections(names: Sequence[str]) -> list[str]:
    """POSTHOC names of --estimators (em -> estimate), checked."""
    out = [ESTIMATOR_ALIASES.get(n, n) for n in names]
    for name in out:
        POSTHOC.get(name, where="--estimators")
    return out


def corrections(options: EvalOptions, shift: ShiftOptions) -> list[str]:
    """none, the requested post-hoc corrections, and (with estimators) the oracle plus every estimator."""
    modes = list(options.posthoc) or ["none"]
    if shift.estimators:
        modes += ["oracle"] + estimator_corrections(shift.estimators)
    return list(dict.fromkeys(["none", *modes]))


def check_shift_options(options: EvalOptions, shift: ShiftOptions) -> None:
    """Protocol names and settings, corrections and the aggregation, before any work."""
    for name in shift.protocols:
        TEST_PROTOCOLS.get(name, where="--protocol")
    for name in shift.settings:
        if name not in shift.protocols:
            raise ConfigError(f"--protocol_set gives settings of protocol {name!r}, which is not among --protocol "
                              f"({', '.join(shift.protocols)})")
        protocol_settings(name, shift.settings[name])
    for mode in corrections(options, shift):
        POSTHOC.get(mode, where="--posthoc_bias_correction / --estimators")
    AGGREGATIONS.get(options.aggregation, where="--aggregation")
    if shift.logits_dtype not in ("float32", "float16"):
        raise ConfigError(f"--logits_dtype must be float32 or float16, got {shift.logits_dtype!r}")


# ---- logits from checkpoints

def _loader_for(config: dict[str, Any], dataset: Any, device: torch.device) -> Any:
    """A sequential evaluation loader over ``dataset`` (as the test loader of data_loader/factory.py)."""
    _, loader_args = split_loader_args(config["data_loader"])
    return LOADERS.build(dataset.loader_kind, "data_loader", dataset=dataset.to(device),
                         batch_size=int(config.get("evaluation", {}).get("test_batch_size", 512)), sampler="sequential",
                         augment=None, drop_last=False, limit_batches=None,
                         channels_last=bool(config.get("trainer", {}).get("channels_last", False)),
                         seed=int(config.get("seed", 1)), num_workers=loader_args.get("num_workers", 0), device=device,
                         decode=loader_args.get("decode", "pil"))


def heldout_logits(run: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(logits, targets) of the configured data set's 'val' split (a held-out split of the training set, or the
    data set's own validation list); None when it has none."""
    try:
        dataset = build_dataset(run.config, "val")
    except (ConfigError, DataNotFoundError, DataError):
        return None
    loader = _loader_for(run.config, dataset, device)
    return collect_logits(run.model, loader, run.config["trainer"].get("amp", "off"))


def test_set_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The data set and its arguments (without paths and loader settings): what makes two test sets the same."""
    args, _ = split_loader_args(config["data_loader"])
    args = {k: v for k, v in args.items() if k not in ("data_dir", "txt_dir", "download")}
    return {"data": config["data_loader"].get("type"), "args": args}


def collect_logit_set(run: Any, data: Any, priors: Sequence[str], aggregation: str, device: torch.device,
                      with_heldout: bool) -> LogitSet:
    """One model pass over the test set (plus the held-out split and augmented views when asked for)."""
    amp = run.config["trainer"].get("amp", "off")
    expert_logits, targets = collect_logits(run.model, data.test_loader, amp)
    fixed = {p: data.test_set.test_prior_indices(p, run.cls_num_list).cpu() for p in priors}
    held = heldout_logits(run, device) if with_heldout else None
    views, views_of = None, ""
    collect_views = getattr(AGGREGATIONS.get(aggregation), "collect_views", None)
    if collect_views is not None:
        views = collect_views(run.model, data.test_loader, procedure_settings(aggregation, run.config["evaluation"]), amp)
        views_of = aggregation
    def plain(tensor: torch.Tensor | None) -> torch.Tensor | None:  # a normal CPU tensor (not an inference tensor)
        return None if tensor is None else tensor.detach().cpu().clone()

    return LogitSet(plain(expert_logits), plain(targets), list(run.cls_num_list), run.config["name"], run.seed,
                    str(run.path), dict(run.config["evaluation"]), test_set_identity(run.config), fixed,
                    int(getattr(data.test_set, "split_seed", 0)), plain(None if held is None else held[0]),
                    plain(None if held is None else held[1]), plain(views), views_of,
                    label=run.label)


def logit_sets_from_checkpoints(options: EvalOptions, shift: ShiftOptions) -> list[LogitSet]:
    """Every checkpoint's LogitSet (each model pass once); written to --save_logits when asked."""
    if options.aggregation != "mean" and getattr(AGGREGATIONS.get(options.aggregation), "collect_views", None) is None:
        raise ConfigError(f"aggregation {options.aggregation!r} has no saved-view form (collect_views), so it cannot "
                          "run in the protocol evaluation; use it with the classic evaluation (no --protocol beyond "
                          "fixed, no --estimators / --logits / --save_logits)")
    loaded = load_runs(options)
    sets = []
    for run, data in loaded:
        priors = list(options.priors) or default_priors(run.config)
        device = next(run.model.parameters()).device
        sets.append(collect_logit_set(run, data, priors, options.aggregation, device,
                                      with_heldout=bool(shift.estimators) or shift.save_logits is not None))
    if shift.save_logits:
        dtype = torch.float16 if shift.logits_dtype == "float16" else torch.float32
        for index, logit_set in enumerate(sets):
            path = save_logits(logit_set, Path(shift.save_logits) / logit_file_name(logit_set, index), dtype)
            if not options.quiet:
                print(f"wrote {path}", file=sys.stderr)
    return sets


def label_sets(sets: Sequence[LogitSet]) -> None:
    """'seed<N>', prefixed by the method name when several methods are compared, plus the checkpoint folder (or
    the file) when two sets would otherwise share a label (as runner.label_runs)."""
    several = len({s.name for s in sets}) > 1
    labels = [f"{s.name}/seed{s.seed}" if several else f"seed{s.seed}" for s in sets]
    for logit_set, label in zip(sets, labels):
        where = Path(logit_set.checkpoint).parent.name if logit_set.checkpoint else "file"
        logit_set.label = label if labels.count(label) == 1 else f"{label}:{where}"


# ---- evaluation of logit sets

def calibration_columns(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """ECE / MCE (15 bins), classwise ECE, NLL and Brier of one test set's corrected logits."""
    log_probs = F.log_softmax(logits.double(), dim=1)  # once: NLL = -mean log p_y (= negative_log_likelihood)
    probs = log_probs.exp()
    nll = float(-log_probs.gather(1, targets[:, None]).mean())
    return {**calibration_errors(probs, targets), "cw_ece": classwise_calibration_error(probs, targets),
            "nll": nll, "brier": brier_score(probs, targets)}


DRAWS: dict[tuple, dict[str, list[ShiftedPrior]]] = {}  # draws of the last test set (files of one data set share them)


def draw_all(logit_set: LogitSet, shift: ShiftOptions, priors: Sequence[str]) -> dict[str, list[ShiftedPrior]]:
    """Every protocol's test sets for one logit set (the same for every set with the same labels, counts and fixed
    subsets: drawn once for all of them)."""
    key = (labels_digest(logit_set.targets), tuple(logit_set.train_counts), shift.seed, logit_set.fixed_seed,
           json.dumps(shift.settings, sort_keys=True), tuple(shift.protocols), tuple(priors),
           tuple((k, labels_digest(v)) for k, v in logit_set.fixed.items()))
    if key not in DRAWS:
        DRAWS.clear()
        DRAWS[key] = draw_uncached(logit_set, shift, priors)
    return DRAWS[key]


def draw_uncached(logit_set: LogitSet, shift: ShiftOptions, priors: Sequence[str]) -> dict[str, list[ShiftedPrior]]:
    """Every protocol's test sets for one logit set."""
    pool = PriorPool(logit_set.targets.numpy(), logit_set.train_counts, shift.seed,
                     {k: v.numpy() for k, v in logit_set.fixed.items()}, logit_set.fixed_seed)
    drawn = {}
    for name in shift.protocols:
        settings = dict(shift.settings.get(name, {}))
        if name == "fixed" and "priors" not in settings:  # --priors, else the file's own, else the CIFAR 11
            settings["priors"] = list(priors) or list(logit_set.fixed) or list(CIFAR_TEST_PRIORS)
        drawn[name] = draw_protocol(name, pool, settings)
    return drawn


def applicable_aggregation(logit_set: LogitSet, aggregation: str, quiet: bool) -> str:
    """The aggregation a logit set is evaluated with: the requested one when its views were collected for it, the
    plain mean for a file without views (noted once), an error for views of another procedure."""
    if aggregation == "mean" or logit_set.views_of == aggregation:
        return aggregation
    if logit_set.view_logits is None:
        if not quiet:
            print(f"{logit_set.label or logit_set.name}: no test-time views for {aggregation!r} in this logits file; "
                  "evaluated with the plain expert mean", file=sys.stderr)
        return "mean"
    raise ConfigError(f"{logit_set.checkpoint or logit_set.name}: its views were collected for aggregation "
                      f"{logit_set.views_of!r}, not {aggregation!r}")


def aggregation_weights(logit_set: LogitSet, subsets: dict[str, torch.Tensor], aggregation: str,
                        quiet: bool) -> dict[str, torch.Tensor] | None:
    """The test-time aggregation's weights per distinct subset, learned on the saved views (None: plain mean)."""
    if aggregation == "mean":
        return None
    settings = procedure_settings(aggregation, logit_set.evaluation)
    logit_set.quiet = quiet  # type: ignore[attr-defined]  (the procedure prints per prior unless quiet)
    context = AggregationContext(logit_set, None, subsets, logit_set.expert_logits, logit_set.targets, settings,
                                 logit_set.view_logits)
    return AGGREGATIONS.get(aggregation)(context)


def mean_weight(weight: torch.Tensor | None) -> torch.Tensor | None:
    """Per-image weights (N, E) -> their mean (E,), for the held-out ensemble and the w columns."""
    return weight if weight is None or weight.dim() == 1 else weight.mean(dim=0)


def evaluate_logit_set(logit_set: LogitSet, shift: ShiftOptions, modes: Sequence[str], aggregation: str,
                       priors: Sequence[str], quiet: bool = True,
                       reliability: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Rows of one logit set: every protocol x test set x correction."""
    drawn = draw_all(logit_set, shift, priors)
    masks = masks_for(logit_set.train_counts, logit_set.evaluation)
    keys: dict[bytes, str] = {}
    subsets: dict[str, torch.Tensor] = {}
    for shifted in (s for sets in drawn.values() for s in sets):  # one aggregation per distinct index set
        key = shifted.indices.tobytes()
        if key not in keys:
            keys[key] = f"s{len(keys)}:{shifted.name}"
            subsets[keys[key]] = torch.from_numpy(shifted.indices)
    aggregation = applicable_aggregation(logit_set, aggregation, quiet)
    weights = aggregation_weights(logit_set, subsets, aggregation, quiet)
    mean_logits = logit_set.expert_logits.mean(dim=1)
    contexts: dict[Any, PosthocContext] = {}

    def context_for(weight: torch.Tensor | None) -> PosthocContext:
        shown = mean_weight(weight)
        key = None if shown is None else tuple(shown.tolist())
        if key not in contexts:
            held = logit_set.heldout_logits
            contexts[key] = PosthocContext(logit_set.train_counts, logit_set.evaluation,
                                           None if held is None else ensemble_logits(held, shown),
                                           logit_set.heldout_targets)
        return contexts[key]

    base = {"checkpoint": logit_set.checkpoint, "run": logit_set.label, "seed": logit_set.seed,
            "method": logit_set.name, "aggregation": aggregation}
    rows = []
    for protocol, sets in drawn.items():
        for shifted in sets:
            idx = torch.from_numpy(shifted.indices)
            weight = weights[keys[shifted.indices.tobytes()]] if weights else None
            target = logit_set.targets[idx]
            ensemble = mean_logits[idx] if weight is None else ensemble_logits(logit_set.expert_logits[idx], weight)
            context = context_for(weight)
            for mode in modes:
                logits, extra = POSTHOC.get(mode)(ensemble, target, context)
                row = {**base, "protocol": protocol, "prior": shifted.name, "family": shifted.family,
                       "severity": shifted.severity, "posthoc": mode, **accuracy_report(logits, target, masks),
                       "n_images": len(idx), **calibration_columns(logits, target), **extra}
                if weight is not None:
                    row.update({f"w{e}": float(w) for e, w in enumerate(mean_weight(weight).tolist())})
                rows.append(row)
                if reliability is not None and protocol in ("fixed", "severity") and mode in ("none", "ts"):
                    reliability.append({"method": logit_set.name, "run": logit_set.label, "protocol": protocol,
                                        "prior": shifted.name, "posthoc": mode,
                                        **reliability_bins(F.softmax(logits.double(), dim=1), target)})
    return rows


def evaluate_logit_sets(sets: Sequence[LogitSet], shift: ShiftOptions, modes: Sequence[str], aggregation: str = "mean",
                        priors: Sequence[str] = (), quiet: bool = True,
                        reliability: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """The tidy rows of every logit set (one row per checkpoint x protocol x test set x correction)."""
    rows = []
    for logit_set in sets:
        rows += evaluate_logit_set(logit_set, shift, modes, aggregation, priors, quiet, reliability)
    return pd.DataFrame(rows)


# ---- summaries and tables

def severity_area(frame: pd.DataFrame, value: str = "all") -> float:
    """Normalised area under a severity curve: the trapezoid integral of ``value`` over the severity axis [-1, 1],
    divided by its length (a mean accuracy over the curve, in %)."""
    curve = frame.dropna(subset=["severity"]).sort_values("severity")
    x, y = curve["severity"].to_numpy(float), curve[value].to_numpy(float)
    if len(x) < 2 or x[-1] == x[0]:
        return float("nan")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """One row per checkpoint x aggregation x correction x protocol: mean, worst and spread (std over test sets)
    of the top-1, mean and worst of each shot group, mean calibration metrics and estimation errors, and the
    severity-curve area."""
    rows = []
    for key, frame in results.groupby(SUMMARY_KEYS, sort=False, dropna=False):
        row = dict(zip(SUMMARY_KEYS, key))
        row.update({"mean": frame["all"].mean(), "worst": frame["all"].min(), "spread": frame["all"].std(ddof=0),
                    "priors": len(frame)})
        for group in ("many", "medium", "few"):
            row[group], row[f"{group}_worst"] = frame[group].mean(), frame[group].min()
        for metric in ("ece", "cw_ece", "nll", "brier", "prior_tv", "prior_js"):
            if metric in frame:
                row[metric] = frame[metric].mean()
        row["area"] = severity_area(frame) if row["protocol"] == "severity" else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def family_summary(results: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Mean top-1 / shot groups per family (Dirichlet centre, alpha, rho) of one protocol, per checkpoint."""
    frame = results[results["protocol"] == protocol]
    keys = [k for k in SUMMARY_KEYS if k != "protocol"] + ["family"]
    return frame.groupby(keys, sort=False, dropna=False)[list(GROUPS)].mean().reset_index()


def shift_tables(results: pd.DataFrame, summary: pd.DataFrame, protocols: Sequence[str]) -> list[PaperTable]:
    """The paper tables: summary per protocol, families of the sampled protocols, severity area, calibration and
    (with estimators) the estimation errors; cells are mean ± std over seeds."""
    plain = summary[summary["posthoc"] == "none"]
    tables = [paper_table(plain, ["mean", "worst", "many", "medium", "few"], "protocol", protocols,
                          caption="top-1 (%) over each protocol's test sets: mean, worst test set, many/medium/few "
                                  "(mean over test sets); mean ± std over seeds")]
    for protocol in ("dirichlet", "dirichlet_sym", "tweak_one"):
        if protocol in protocols:
            families = family_summary(results[results["posthoc"] == "none"], protocol)
            tables.append(paper_table(families, ["all", "few"], "family", None,
                                      caption=f"{protocol}: top-1 and few-shot (%) per family (mean over its test sets)"))
    if "severity" in protocols:
        severity = plain[plain["protocol"] == "severity"]
        tables.append(paper_table(severity, ["area", "worst"], None,
                                  caption="severity curve (backward-K ... uniform ... forward-K): normalised area "
                                          "under top-1 vs severity (%) and its worst point"))
    tables.append(paper_table(summary, ["ece", "cw_ece", "nll", "brier"], "protocol", protocols,
                              caption="calibration under shift (mean over each protocol's test sets): ECE, classwise "
                                      "ECE (%), NLL, Brier, per correction"))
    if summary["posthoc"].nunique() > 1:
        metrics = ["mean", "worst"] + [m for m in ("prior_tv", "prior_js") if m in summary]
        tables.append(paper_table(summary, metrics, "protocol", protocols,
                                  caption="corrections: top-1 mean / worst (%) and the estimate's TV and JS "
                                          "(natural log) distance to the true test prior"))
    return tables


# ---- plots

def plot_severity(results: pd.DataFrame, path: str | Path, value: str = "all") -> Path:
    """Top-1 versus severity (backward-K left, forward-K right): one mean line per method (and correction) with a
    ± std band over seeds; the legend gives each curve's normalised area."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = results[results["protocol"] == "severity"].copy()
    frame["series"] = row_labels(frame)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, subset in frame.groupby("series", sort=False):
        stats = subset.groupby("severity")[value].agg(["mean", "std"]).sort_index()
        areas = [severity_area(run) for _, run in subset.groupby("run")]
        ax.plot(stats.index, stats["mean"], marker="o", label=f"{name} (area {np.mean(areas):.1f})")
        std = stats["std"].fillna(0.0)
        ax.fill_between(stats.index, stats["mean"] - std, stats["mean"] + std, alpha=0.2)
    ticks = frame.drop_duplicates("severity").sort_values("severity")
    ax.set_xticks(ticks["severity"])
    ax.set_xticklabels(ticks["prior"], rotation=45, ha="right")
    ax.set_ylabel(f"{value} top-1 (%)")
    ax.set_xlabel("test prior (severity: log ratio / log largest ratio)")
    runs = frame.groupby("series")["run"].nunique().max() if len(frame) else 0
    methods = ", ".join(dict.fromkeys(frame["method"]))
    ax.set_title("\n".join(textwrap.wrap(f"severity curve of {methods} (mean ± std over {runs} seeds)", 110)),
                 fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def plot_reliability(bins: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Reliability diagrams of one run: one panel per test prior, accuracy vs confidence per bin for each
    correction ('none', 'ts'), the diagonal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priors = list(dict.fromkeys(b["prior"] for b in bins))
    cols = min(4, len(priors))
    rows = (len(priors) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.8 * rows), squeeze=False)
    for ax, prior in zip(axes.flat, priors):
        for entry in (b for b in bins if b["prior"] == prior):
            shown = [i for i, n in enumerate(entry["count"]) if n > 0]
            ax.plot([entry["confidence"][i] for i in shown], [entry["accuracy"][i] for i in shown], marker=".",
                    label=entry["posthoc"])
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_title(prior, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(priors):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"reliability (accuracy vs confidence): {bins[0]['run'] if bins else ''}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


# ---- end to end

def out_dir_for(options: EvalOptions, sets: Sequence[LogitSet]) -> Path | None:
    """--out, or results/<name>-test_all-<time>/ for several logit sets (as the runner)."""
    if options.out:
        return Path(options.out)
    if len(sets) > 1 and options.auto_out:
        return Path("results") / f"{config_stem(sets[0].name)}-test_all-{datetime.now():%Y%m%d-%H%M%S}"
    return None


def write_outputs(out_dir: Path, results: pd.DataFrame, summary: pd.DataFrame, tables: Sequence[PaperTable],
                  shift: ShiftOptions, reliability: Sequence[dict[str, Any]], quiet: bool) -> None:
    """results.csv (tidy rows), summary.csv, results.md/.tex (tables), protocols.json (what was drawn and how),
    severity.png, reliability_<run>.png."""
    write_csv(results, out_dir / "results.csv")
    write_csv(summary, out_dir / "summary.csv")
    (out_dir / "results.md").write_text("\n\n".join(to_markdown(t) for t in tables) + "\n")
    (out_dir / "results.tex").write_text("\n\n".join(to_latex(t) for t in tables) + "\n")
    settings = {name: protocol_settings(name, shift.settings.get(name)) for name in shift.protocols}
    (out_dir / "protocols.json").write_text(json.dumps({"seed": shift.seed, "protocols": settings}, indent=2) + "\n")
    written = ["results.csv", "summary.csv", "results.md", "results.tex", "protocols.json"]
    if "severity" in set(results["protocol"]):
        written.append(plot_severity(results, out_dir / "severity.png").name)
    if shift.reliability and reliability:
        first_runs = list(dict.fromkeys(r["run"] for r in reliability))
        shown = {}
        for run in first_runs:  # one diagram per method: its first run
            method = next(r["method"] for r in reliability if r["run"] == run)
            shown.setdefault(method, run)
        for method, run in shown.items():
            bins = [r for r in reliability if r["run"] == run and r["protocol"] == reliability[0]["protocol"]]
            written.append(plot_reliability(bins, out_dir / f"reliability_{config_stem(method)}.png").name)
    if not quiet:
        print(f"\nwrote {out_dir}/: {', '.join(written)}")


def apply_evaluation_overrides(logit_set: LogitSet, overrides: Sequence[tuple[str, Any]]) -> None:
    """--set evaluation.<key>=VALUE on a logits file's evaluation block (e.g. evaluation.source_prior=train); other
    keys describe the model or the data and cannot change once the logits are saved."""
    for key, value in overrides:
        if not key.startswith("evaluation."):
            raise ConfigError(f"--set {key}: a logits file only takes evaluation.* overrides (its model and data "
                              "are fixed), e.g. --set evaluation.source_prior=train")
        block = {"evaluation": logit_set.evaluation}
        set_by_path(block, key, value)
        logit_set.evaluation = block["evaluation"]


def evaluate_shift(options: EvalOptions, shift: ShiftOptions) -> pd.DataFrame:
    """Logits files (--logits) or checkpoints (-r) -> every protocol, correction and metric -> files and tables."""
    check_shift_options(options, shift)
    if shift.logit_files:
        sets = [load_logits(path) for path in expand_logit_files(shift.logit_files)]
        for logit_set, path in zip(sets, expand_logit_files(shift.logit_files)):
            logit_set.checkpoint = logit_set.checkpoint or str(path)
            apply_evaluation_overrides(logit_set, options.overrides)
    else:
        sets = logit_sets_from_checkpoints(options, shift)
    label_sets(sets)
    reliability: list[dict[str, Any]] = []
    results = evaluate_logit_sets(sets, shift, corrections(options, shift), options.aggregation, options.priors,
                                  options.quiet, reliability)
    summary = summarise(results)
    tables = shift_tables(results, summary, shift.protocols)
    if not options.quiet:  # the console shows the summary (and the corrections); every table is in results.md
        shown = [tables[0]] + ([tables[-1]] if summary["posthoc"].nunique() > 1 else [])
        print("\n\n".join(to_text(t) for t in shown))
    out_dir = out_dir_for(options, sets)
    if out_dir is not None:
        write_outputs(out_dir, results, summary, tables, shift, reliability, options.quiet)
    return results
