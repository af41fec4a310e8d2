"""The shared evaluation module behind test.py and test_all_*.py: checkpoints -> logits once -> tables and files."""
from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from data_loader.factory import DataBundle, build_data, split_loader_args
from trainer.build import build_model, resolve_device
from trainer.cost import expert_cost, routing_report
from trainer.evaluator import collect_logits, masks_for, prior_reports, uniform_report
from trainer.prior_estimation import source_prior
from trainer.test_time import learn_weights_on_images
from utils.checkpoint import CheckpointError, load_checkpoint, strip_prefixes
from utils.config import config_stem, parse_cli_value, resolve_config, set_by_path
from utils.registry import ConfigError
from utils.tables import plot_priors, render, seed_table, wide_table, write_csv

GROUPS = ("many", "medium", "few", "all")


@dataclass
class LoadedRun:
    """A checkpoint ready for evaluation."""

    path: Path
    config: dict[str, Any]
    model: nn.Module
    cls_num_list: list[int]
    label: str = ""

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


def expand_checkpoints(patterns: Sequence[str]) -> list[Path]:
    """Paths, shell globs (quoted) or run directories (-> their last.pth), in order, without duplicates."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not matches:
            raise CheckpointError(f"no checkpoint matches {pattern!r}")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                path = path / "last.pth"
            if not path.is_file():
                raise CheckpointError(f"checkpoint not found: {path}")
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


def prepare(path: Path, device: torch.device, test_data: TestData, overrides: Sequence[tuple[str, Any]]) -> tuple[LoadedRun, DataBundle]:
    """Rebuild a checkpoint's model from its own config, load the weights (strict) and fetch its test data."""
    state = load_checkpoint(path)
    config = json.loads(json.dumps(state["config"]))
    for key, value in overrides:
        set_by_path(config, key, value)
    run = LoadedRun(path, resolve_config(config), nn.Identity(), list(state["cls_num_list"]))
    data = test_data.get(run.config)
    model = build_model(run.config, data.test_set.num_classes, data.test_set.image_shape[0], run.cls_num_list)
    try:
        model.load_state_dict(strip_prefixes(state["model"]))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the model described by its config: "
                              f"{str(exc).splitlines()[0]}") from None
    model = model.to(device)
    if run.config["trainer"].get("channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    run.model = model.eval()
    return run, data


def label_runs(runs: Sequence[LoadedRun]) -> None:
    """'seed<N>', prefixed by the config name when runs of several configs are compared, plus the run folder
    when two runs would otherwise share a label."""
    several_configs = len({r.config["name"] for r in runs}) > 1
    labels = [f"{r.config['name']}/seed{r.seed}" if several_configs else f"seed{r.seed}" for r in runs]
    for run, label in zip(runs, labels):
        run.label = label if labels.count(label) == 1 else f"{label}:{run.path.parent.name}"


def build_parser(description: str, with_priors: bool) -> argparse.ArgumentParser:
    """Arguments shared by test.py and test_all_*.py."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-r", "--resume", nargs="+", required=True,
                   help="checkpoint(s): paths, quoted globs ('saved/x/seed*/last.pth') or run directories")
    p.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--data_dir", help="override the data directory stored in the checkpoint's config")
    p.add_argument("--batch_size", type=int, help="evaluation batch size (default: evaluation.test_batch_size)")
    p.add_argument("--out", help="folder for results.csv/.md/.tex (+ plot); default results/<name>-<time> for several checkpoints")
    p.add_argument("--router_threshold", type=float,
                   help="router models: early-exit threshold on sigmoid(router logit) (arch.router.args.threshold); "
                        "higher -> fewer experts per sample")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the checkpoint's config, e.g. --set evaluation.source_prior=train or "
                        "--set evaluation.test_time.lr=0.05 (repeatable)")
    if with_priors:
        p.add_argument("--posthoc_bias_correction", nargs="?", const="oracle", choices=("oracle", "estimate"),
                       help="also report accuracies after adding a log test prior to the logits: 'oracle' (default: the "
                            "true prior of each test set) or 'estimate' (EM estimate from the unlabeled predictions, "
                            "relative to evaluation.source_prior: uniform | train | train^g)")
        p.add_argument("--test_time_aggregation", action="store_true",
                       help="SADE test-time self-supervised aggregation: learn expert weights per test prior on its "
                            "unlabeled images (settings: evaluation.test_time.*) and evaluate with them")
        p.add_argument("--priors", nargs="+", help="subset/order of test priors to evaluate")
    return p


def _overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """Config overrides requested on the command line."""
    out: list[tuple[str, Any]] = []
    if args.data_dir:
        out.append(("data_loader.args.data_dir", args.data_dir))
    if args.batch_size:
        out.append(("evaluation.test_batch_size", args.batch_size))
    if getattr(args, "router_threshold", None) is not None:
        out.append(("arch.router.args.threshold", args.router_threshold))
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set evaluation.source_prior=train), got {item!r}")
        key, value = item.split("=", 1)
        out.append((key.strip(), parse_cli_value(value)))
    return out


def _out_dir(args: argparse.Namespace, runs: Sequence[LoadedRun], script: str) -> Path | None:
    """Where result files go: --out, or an automatic folder when several checkpoints are evaluated."""
    if args.out:
        return Path(args.out)
    if len(runs) > 1:
        return Path("results") / f"{config_stem(runs[0].config['name'])}-{script}-{datetime.now():%Y%m%d-%H%M%S}"
    return None


def _write(out_dir: Path | None, rows: list[dict[str, Any]], tables: list[tuple[str, list[str], list[list[Any]]]]) -> None:
    """results.csv (tidy), results.md and results.tex with every printed table."""
    if out_dir is None:
        return
    write_csv(rows, out_dir / "results.csv")
    (out_dir / "results.md").write_text("\n\n".join(render(h, b, "markdown", c) for c, h, b in tables) + "\n")
    (out_dir / "results.tex").write_text("\n\n".join(render(h, b, "latex", c) for c, h, b in tables) + "\n")
    print(f"\nwrote {out_dir}/results.csv, results.md, results.tex")


def _load_all(args: argparse.Namespace) -> tuple[torch.device, list[tuple[LoadedRun, DataBundle]]]:
    """Resolve device and load every requested checkpoint with its test data."""
    device = resolve_device(args.device)
    test_data = TestData(device)
    loaded = [prepare(path, device, test_data, _overrides(args)) for path in expand_checkpoints(args.resume)]
    label_runs([run for run, _ in loaded])
    return device, loaded


def _base_row(run: LoadedRun) -> dict[str, Any]:
    """Identification columns of a result row."""
    return {"checkpoint": str(run.path), "run": run.label, "seed": run.seed, "method": run.config["name"]}


def run_test(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Uniform test set: top-1, many/medium/few, per-expert top-1, ECE (15 bins), NLL."""
    _, loaded = _load_all(args)
    rows = []
    for run, data in loaded:
        extras: dict[str, torch.Tensor] = {}
        expert_logits, targets = collect_logits(run.model, data.test_loader, run.config["trainer"].get("amp", "off"), extras)
        masks = masks_for(run.cls_num_list, run.config["evaluation"])
        report = uniform_report(expert_logits, targets, masks)
        if "experts_used" in extras:  # router models: experts per sample and the resulting expected compute
            cost = expert_cost(run.model, data.test_set.image_shape)
            report.update(routing_report(extras["experts_used"], targets, masks, cost))
        rows.append({**_base_row(run), "prior": "uniform", **report})
    experts = sorted({k for r in rows for k in r if k.startswith("expert") and k[len("expert"):].isdigit()},
                     key=lambda k: int(k[len("expert"):]))
    routing = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith(("experts_", "pct_", "mmacs"))]
    columns = list(GROUPS) + ["ece", "mce", "nll", "brier"] + experts + routing
    header, body = seed_table([{**r, "metric": c, "value": r.get(c, float("nan"))} for r in rows for c in columns],
                              "metric", columns, "value", group_key="method")
    caption = "uniform test set: top-1 (%) all/many/medium/few, ECE/MCE (%), NLL, Brier, per-expert top-1 (%)"
    if "experts_mean" in rows[0]:
        caption += ("; router: experts used (mean, per true-class group), % of samples using k experts, expected MACs per "
                    "image in millions (mmacs; / 1000 = the reference's GFLOPs) and with all experts (per-expert columns: "
                    "skipped experts hold the mean of the used ones)")
    print(render(header, body, "text", caption))
    _write(_out_dir(args, [r for r, _ in loaded], "test"), rows, [(caption, header, body)])
    return rows


POSTHOC_CAPTIONS = {"none": "", "oracle": " with posthoc bias correction (log test prior added)",
                    "estimate": " with posthoc bias correction (EM-estimated test prior)"}


def aggregation_weights(run: LoadedRun, data: DataBundle, subsets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SADE test-time aggregation: expert weights learned on each test prior's unlabeled images (printed)."""
    weights = {}
    for prior, idx in subsets.items():
        result = learn_weights_on_images(run.model, data.test_loader, idx, run.config)
        weights[prior] = result.weights
        print(f"{run.label} {prior}: expert weights {', '.join(f'{w:.3f}' for w in result.weights.tolist())} "
              f"after {result.epochs_run} epoch(s)")
    return weights


def _prior_tables(rows: list[dict[str, Any]], posthoc: Sequence[str], priors: Sequence[str], single: bool
                  ) -> list[tuple[str, list[str], list[list[Any]]]]:
    """Per post-hoc mode: one wide table (single run) or one seed table per metric (several runs)."""
    tables = []
    for mode in posthoc:
        subset = [r for r in rows if r["posthoc"] == mode]
        extra = [k for k in subset[0] if k == "prior_tv" or (k.startswith("w") and k[1:].isdigit())]
        suffix = POSTHOC_CAPTIONS[mode]
        if single:
            header, body = wide_table(subset, "prior", list(GROUPS) + extra)
            tables.append((f"test-agnostic evaluation{suffix}: top-1 (%)" + (", " + ", ".join(extra) if extra else ""),
                           header, body))
            continue
        for key in list(GROUPS) + extra:
            header, body = seed_table(subset, "prior", priors, key, group_key="method")
            tables.append((f"{key} accuracy (%){suffix}" if key in GROUPS else f"{key}{suffix}", header, body))
    return tables


def run_test_all(args: argparse.Namespace, priors: Sequence[str]) -> list[dict[str, Any]]:
    """Every test prior from one set of logits per checkpoint; optional test-time aggregation and post-hoc correction."""
    priors = list(args.priors or priors)
    _, loaded = _load_all(args)
    posthoc = ("none", args.posthoc_bias_correction) if args.posthoc_bias_correction else ("none",)
    rows: list[dict[str, Any]] = []
    for run, data in loaded:
        expert_logits, targets = collect_logits(run.model, data.test_loader, run.config["trainer"].get("amp", "off"))
        subsets = {p: data.test_set.test_prior_indices(p, run.cls_num_list) for p in priors}
        masks = masks_for(run.cls_num_list, run.config["evaluation"])
        weights = aggregation_weights(run, data, subsets) if args.test_time_aggregation else None
        source = source_prior(run.config["evaluation"]["source_prior"], run.cls_num_list)
        rows += [{**_base_row(run), **r} for r in prior_reports(expert_logits, targets, subsets, masks, posthoc, weights, source)]
    tables = _prior_tables(rows, posthoc, priors, single=len(loaded) == 1)
    for caption, header, body in tables:
        print(render(header, body, "text", caption) + "\n")
    out_dir = _out_dir(args, [r for r, _ in loaded], "test_all")
    _write(out_dir, rows, tables)
    if out_dir is not None:
        plot = plot_priors(rows, priors, out_dir / "accuracy_vs_prior.png", title=f"{loaded[0][0].config['name']}")
        print(f"wrote {plot}")
    return rows


def _guard(fn: Any, *args: Any) -> int:
    """Run an evaluation and turn expected errors into a message and exit code 2."""
    try:
        fn(*args)
        return 0
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def uniform_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of test.py."""
    args = build_parser("Evaluate checkpoints on the uniform test set.", with_priors=False).parse_args(argv)
    return _guard(run_test, args)


def priors_main(priors: Sequence[str], argv: Sequence[str] | None = None, description: str = "") -> int:
    """Entry point of the test_all_*.py scripts: they differ only in ``priors`` (and the data set in the checkpoint)."""
    args = build_parser(description or "Evaluate checkpoints under shifted test class priors.", with_priors=True).parse_args(argv)
    return _guard(run_test_all, args, priors)
