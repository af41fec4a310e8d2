"""Python API of the framework, for notebooks and scripts:

    import longtail
    run = longtail.train("configs/fmnist_ir100/balpoe.json", seed=1, epochs=2)
    results = longtail.evaluate(run, posthoc="oracle")     # a tidy pandas DataFrame, one row per prior x correction

``load_config`` / ``build`` give the resolved config and the built objects without training; ``pipeline`` runs a
method's whole recipe (configs/pipelines/*.json) for several seeds.
"""
from __future__ import annotations

import argparse
import json

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from longtail.evaluation.runner import EvalOptions, evaluate_priors, evaluate_uniform
from longtail.pipeline import evaluate_pipeline, load_pipeline, parse_seeds, run_pipeline
from longtail.core.build import build_without_data, resolve
from longtail.trainer.run import RunResult
from longtail.trainer.run import train as train_run
from longtail.registry import cli_flags
from longtail.utils.config import SHORTCUT_KEYS, apply_overrides, load_config as read_config

__all__ = ["load_config", "build", "train", "evaluate", "pipeline", "RunResult"]


def load_config(config: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None,
                **shortcuts: Any) -> dict[str, Any]:
    """The resolved config of a file (or raw dict) with dotted-key ``overrides`` and shortcut keywords
    (seed, epochs, batch_size, lr, num_experts, data_dir, save_dir, and the train.py flags methods register)."""
    method_flags = {flag.dest: flag for flag in cli_flags("train")}  # a method's train.py flags are keywords too
    unknown = sorted(set(shortcuts) - set(SHORTCUT_KEYS) - set(method_flags))
    if unknown:
        raise TypeError(f"unknown keyword(s) {unknown}; use overrides={{'dotted.key': value}} or one of "
                        f"{', '.join([*SHORTCUT_KEYS, *method_flags])}")
    raw = read_config(config) if isinstance(config, (str, Path)) else dict(config)
    pairs = []
    for key, value in shortcuts.items():
        if value is not None:
            pairs += [(SHORTCUT_KEYS[key], value)] if key in SHORTCUT_KEYS else \
                method_flags[key].apply(argparse.Namespace(), value if isinstance(value, str) else json.dumps(value))
    pairs += list((overrides or {}).items())
    return resolve(apply_overrides(raw, pairs))


def build(config: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None, **shortcuts: Any) -> dict[str, Any]:
    """Every object of a run (model, loss, optimizer, schedule, combiner, augmentation) without reading data."""
    return build_without_data(load_config(config, overrides, **shortcuts))


def train(config: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None, device: str | None = None,
          quiet: bool = True, limit_batches: int | None = None, threads: int | None = None,
          **shortcuts: Any) -> RunResult:
    """Train a config (any stage) in a new run directory; returns its RunResult (``.checkpoint``, ``.metrics``)."""
    return train_run(load_config(config, overrides, **shortcuts), device, quiet=quiet, limit_batches=limit_batches,
                     threads=threads)


def evaluate(runs: RunResult | str | Path | Sequence[RunResult | str | Path], priors: Sequence[str] | str | None = None,
             posthoc: str | Sequence[str] = (), aggregation: str = "mean", device: str | None = None,
             uniform: bool = False, overrides: dict[str, Any] | None = None, include_unfinished: bool = False,
             latest: bool = False) -> pd.DataFrame:
    """Evaluate checkpoints (RunResults, paths, run directories or folders of runs) under the test priors of their
    data set (or ``priors``) with optional post-hoc corrections; ``uniform=True`` gives the uniform-test report
    (calibration, per-expert accuracy) instead. Runs whose training did not finish are refused when several are
    evaluated (``include_unfinished=True`` reports them, marked), and so are two runs of one config and seed
    (``latest=True`` keeps the most recent). Returns the tidy results."""
    runs = [runs] if isinstance(runs, (RunResult, str, Path)) else list(runs)
    paths = [str(r.checkpoint if isinstance(r, RunResult) else r) for r in runs]
    options = EvalOptions(paths, device, list((overrides or {}).items()), quiet=True, auto_out=False,
                          include_unfinished=include_unfinished, latest=latest)
    if uniform:
        return evaluate_uniform(options)
    options.priors = [priors] if isinstance(priors, str) else list(priors or [])
    options.posthoc = ["none", *([posthoc] if isinstance(posthoc, str) else posthoc)]
    options.aggregation = aggregation
    return evaluate_priors(options)


def pipeline(path: str | Path, seeds: str | int | Sequence[int] = 1, device: str | None = None,
             save_dir: str | Path = "saved", overrides: dict[str, Any] | None = None,
             evaluate: bool = False) -> dict[int, dict[str, Path]] | pd.DataFrame:
    """Run a pipeline file for the given seeds ('1-5'); with ``evaluate=True`` return its evaluation table."""
    spec = load_pipeline(path)
    runs = run_pipeline(spec, parse_seeds(seeds), device, save_dir, list((overrides or {}).items()), log=lambda s: None)
    return evaluate_pipeline(spec, parse_seeds(seeds), device, save_dir) if evaluate else runs
