"""Python API of the framework, for notebooks and scripts:

    import longtail
    run = longtail.train("fmnist_ir100/balpoe.json", seed=1, epochs=2)   # -> saved/fmnist_ir100_balpoe-epochs2/...
    results = longtail.evaluate(run, posthoc="oracle")     # a tidy pandas DataFrame, one row per prior x correction
    model = longtail.load(run.checkpoint)                  # the network, sized from the checkpoint itself
    out = longtail.predict(model, split="test")            # logits, predictions, targets
    accuracy = (out.predictions == out.targets).float().mean()

``load_config`` / ``build`` give the resolved config and the built objects without training; ``pipeline`` runs a
method's whole recipe (configs/pipelines/*.json) for several seeds. Runs are named as by train.py: the config's
name plus a suffix for every override that changes the training (``epochs=2`` -> ``-epochs2``), or ``name=``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from longtail.core.build import build_without_data, resolve
from longtail.core.logits import collect_logits
from longtail.data_loader.factory import build_eval_loader
from longtail.evaluation.runner import (
    EvalOptions,
    LoadedRun,
    evaluate_priors,
    evaluate_uniform,
    load_run,
    read_checkpoint_file,
)
from longtail.pipeline import evaluate_pipeline, load_pipeline, parse_seeds, run_pipeline
from longtail.registry import cli_flags
from longtail.trainer.run import RunResult
from longtail.trainer.run import train as train_run
from longtail.utils.config import SHORTCUT_KEYS, apply_overrides, with_run_name
from longtail.utils.config import load_config as read_config
from longtail.utils.defaults import SAVE_DIR
from longtail.utils.device import resolve_device

__all__ = ["load_config", "build", "train", "evaluate", "load", "predict", "pipeline", "RunResult", "LoadedRun",
           "Predictions"]


def load_config(config: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None, name: str | None = None,
                **shortcuts: Any) -> dict[str, Any]:
    """The resolved config of a file (a shipped one by name, or any path; or a raw dict) with dotted-key
    ``overrides`` and shortcut keywords (seed, epochs, batch_size, lr, num_experts, data_dir, save_dir, and the
    train.py flags methods register), named by train.py's rule (see the module docstring)."""
    method_flags = {flag.dest: flag for flag in cli_flags("train")}  # a method's train.py flags are keywords too
    unknown = sorted(set(shortcuts) - set(SHORTCUT_KEYS) - set(method_flags))
    if unknown:
        raise TypeError(f"unknown keyword(s) {unknown}; use overrides={{'dotted.key': value}} or one of "
                        f"{', '.join([*SHORTCUT_KEYS, *method_flags])}")
    raw = read_config(config) if isinstance(config, (str, Path)) else dict(config)
    pairs = [(path, shortcuts[key]) for key, path in SHORTCUT_KEYS.items() if shortcuts.get(key) is not None]
    for key, flag in method_flags.items():  # in train.py's order: shortcuts, method flags, then --set pairs
        if shortcuts.get(key) is not None:
            value = shortcuts[key]
            pairs += flag.apply(argparse.Namespace(), value if isinstance(value, str) else json.dumps(value))
    pairs = with_run_name(raw, pairs + list((overrides or {}).items()), name)
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


def load(checkpoint: RunResult | str | Path, device: str | None = None, overrides: dict[str, Any] | None = None,
         config: str | Path | None = None) -> LoadedRun:
    """A checkpoint's network in eval mode, built from its own stored config and class counts (any data set, e.g. an
    image folder with 5 classes), with ``.model``, ``.config``, ``.cls_num_list``, ``.status`` (finished or how far
    training got). ``config``: a config of this framework for a checkpoint of another code base."""
    path = Path(checkpoint.checkpoint if isinstance(checkpoint, RunResult) else checkpoint)
    path = path / "last.pth" if path.is_dir() else path
    file = read_checkpoint_file(path)
    return load_run(file, resolve_device(device), list((overrides or {}).items()), str(config) if config else None)


@dataclass
class Predictions:
    """Outputs of a model on one data split, in data set order."""

    expert_logits: torch.Tensor  # (N, E, C) float32
    targets: torch.Tensor  # (N,)

    @property
    def logits(self) -> torch.Tensor:
        """The model's prediction logits (N, C): the mean over experts."""
        return self.expert_logits.mean(dim=1)

    @property
    def predictions(self) -> torch.Tensor:
        """Top-1 class per image (N,)."""
        return self.logits.argmax(dim=1)


def predict(run: LoadedRun | RunResult | str | Path, split: str = "test", device: str | None = None,
            batch_size: int | None = None) -> Predictions:
    """Logits, predictions and targets of a loaded run (or a checkpoint path) on a data split: 'test', 'train'
    (without augmentation) or 'val' where the data set has one."""
    if not isinstance(run, LoadedRun):
        run = load(run, device)
    device_ = next(run.model.parameters()).device
    loader = build_eval_loader(run.config, split, device_, batch_size)
    expert_logits, targets = collect_logits(run.model, loader, run.config["trainer"].get("amp", "off"))
    return Predictions(expert_logits, targets)


def pipeline(path: str | Path, seeds: str | int | Sequence[int] = 1, device: str | None = None,
             save_dir: str | Path = SAVE_DIR, overrides: dict[str, Any] | None = None,
             evaluate: bool = False) -> dict[int, dict[str, Path]] | pd.DataFrame:
    """Run a pipeline file for the given seeds ('1-5'); with ``evaluate=True`` return its evaluation table."""
    spec = load_pipeline(path)
    runs = run_pipeline(spec, parse_seeds(seeds), device, save_dir, list((overrides or {}).items()), log=lambda s: None)
    return evaluate_pipeline(spec, parse_seeds(seeds), device, save_dir) if evaluate else runs
