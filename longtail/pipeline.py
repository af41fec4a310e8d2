"""Pipelines: a method's whole recipe (e.g. RIDE teacher -> distilled student -> router) for one or several seeds.

A pipeline file (configs/pipelines/*.json) names its stages in order; each stage is a shipped config plus overrides,
and ``inputs`` link config keys to the run directories of earlier stages of the same seed by exact path
(``{"distill.checkpoint": "teacher"}``, or a list of stages for ``ensemble.checkpoints``). The state of every seed is
kept in ``<save_dir>/pipelines/<name>/seed<S>.json``; running the pipeline again skips finished stages and resumes an
interrupted one from its last.pth. An optional ``evaluate`` list says how each stage's runs are evaluated into one
tidy ``results.csv`` (uniform test report plus every test prior, post-hoc correction and aggregation).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from longtail.core.build import resolve
from longtail.evaluation.runner import EvalOptions, evaluate_priors, evaluate_uniform
from longtail.trainer.run import RunResult, config_for_run, train
from longtail.utils.config import apply_overrides, load_config, load_json
from longtail.utils.defaults import SAVE_DIR
from longtail.utils.errors import ConfigError
from longtail.utils.tables import write_csv

STAGE_KEYS = {"config", "set", "inputs", "description", "resources"}
EVALUATE_KEYS = {"stage", "label", "posthoc", "aggregations", "set", "uniform", "priors"}


@dataclass
class Stage:
    """One stage: a config file, overrides, and config keys fed with earlier stages' checkpoints."""

    name: str
    config: Path
    set: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, str | list[str]] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)  # cluster resources of this stage's jobs (longtail/sweep.py)


@dataclass
class Evaluation:
    """How a stage's runs are evaluated: extra post-hoc corrections, aggregations, config overrides."""

    stage: str
    label: str
    posthoc: list[str] = field(default_factory=list)
    aggregations: list[str] = field(default_factory=lambda: ["mean"])
    set: dict[str, Any] = field(default_factory=dict)
    uniform: bool = True
    priors: list[str] = field(default_factory=list)  # default: the pipeline's


@dataclass
class Pipeline:
    """A named list of stages (and how to evaluate them)."""

    name: str
    path: Path
    stages: list[Stage]
    description: str = ""
    evaluate: list[Evaluation] = field(default_factory=list)
    priors: list[str] = field(default_factory=list)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and check a pipeline file: stage configs exist, inputs name earlier stages, keys are known."""
    path = Path(path)
    data = load_json(path)
    unknown = sorted(set(data) - {"name", "description", "stages", "evaluate", "priors"})
    if unknown or not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise ConfigError(f"{path}: a pipeline needs a non-empty 'stages' object (and may have name, description, "
                          f"evaluate, priors); unknown keys: {unknown}")
    stages: list[Stage] = []
    for name, spec in data["stages"].items():
        if not isinstance(spec, dict) or "config" not in spec or set(spec) - STAGE_KEYS:
            raise ConfigError(f"{path}: stage {name!r} needs 'config' and accepts {', '.join(sorted(STAGE_KEYS))}")
        config = (path.parent / spec["config"]).resolve()
        if not config.is_file():
            raise ConfigError(f"{path}: stage {name!r} names {spec['config']}, which does not exist ({config})")
        inputs = dict(spec.get("inputs", {}))
        for key, source in inputs.items():
            for earlier in [source] if isinstance(source, str) else source:
                if earlier not in [s.name for s in stages]:
                    raise ConfigError(f"{path}: stage {name!r} takes {key} from {earlier!r}, which is not an earlier "
                                      f"stage ({', '.join(s.name for s in stages) or 'none'})")
        if not isinstance(spec.get("resources", {}), dict):
            raise ConfigError(f"{path}: stage {name!r}: 'resources' must be an object such as "
                              '{"gpus_per_node": 1, "timeout_min": 60}')
        stages.append(Stage(name, config, dict(spec.get("set", {})), inputs, dict(spec.get("resources", {}))))
    evaluations = []
    for spec in data.get("evaluate", []):
        if not isinstance(spec, dict) or set(spec) - EVALUATE_KEYS or spec.get("stage") not in data["stages"]:
            raise ConfigError(f"{path}: every 'evaluate' entry needs 'stage' (one of the stages) and accepts "
                              f"{', '.join(sorted(EVALUATE_KEYS))}; got {spec!r}")
        evaluations.append(Evaluation(spec["stage"], spec.get("label", spec["stage"]), list(spec.get("posthoc", [])),
                                      list(spec.get("aggregations", ["mean"])), dict(spec.get("set", {})),
                                      bool(spec.get("uniform", True)), list(spec.get("priors", []))))
    return Pipeline(data.get("name", path.stem), path, stages, data.get("description", ""), evaluations,
                    list(data.get("priors", [])))


def stage_key(stage: Stage, root: str | Path = ".") -> str:
    """How a stage's setting is named in benchmark records and the leaderboard: its config path relative to
    ``root`` plus its overrides (``configs/x/ride.json --set arch.args.num_experts=6``)."""
    path = os.path.relpath(stage.config, root)
    return path + "".join(f" --set {key}={json.dumps(value)}" for key, value in stage.set.items())


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """'1-5' -> [1..5], '1,3,7' -> [1, 3, 7], 2 -> [2]."""
    if isinstance(text, int):
        return [text]
    if not isinstance(text, str):
        return [int(s) for s in text]
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ConfigError(f"--seeds expects numbers and ranges like 1-5 or 1,3,7, got {text!r}")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        seeds += list(range(low, high + 1))
    return seeds


class SeedState:
    """``<save_dir>/pipelines/<name>/seed<S>.json``: each stage's run directory and whether it finished.

    Stages of one seed may run at the same time as separate processes or cluster jobs (e.g. cRT and LWS from one
    stage 1): every write re-reads the file under a lock and replaces it atomically, so no stage's record is lost."""

    def __init__(self, folder: Path, seed: int) -> None:
        self.path = folder / f"seed{seed}.json"
        self.stages: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        """The stages recorded in the file (none when it does not exist yet)."""
        return json.loads(self.path.read_text())["stages"] if self.path.is_file() else {}

    def record(self, stage: str, run_dir: Path, done: bool) -> None:
        """Remember a stage's run directory (written at once, so a crash mid-stage is resumable)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.stages = {**self._read(), stage: {"run_dir": str(run_dir), "done": done}}
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"stages": self.stages}, indent=2) + "\n")
            os.replace(tmp, self.path)

    def checkpoint(self, stage: str) -> Path | None:
        """The stage's last.pth when it exists."""
        record = self.stages.get(stage)
        path = Path(record["run_dir"]) / "last.pth" if record else None
        return path if path is not None and path.is_file() else None

    def finished(self, stage: str) -> bool:
        """Whether the stage ran to its end (its last.pth holds the final state)."""
        return bool(self.stages.get(stage, {}).get("done")) and self.checkpoint(stage) is not None


def state_folder(pipeline: Pipeline, save_dir: str | Path) -> Path:
    """Where the pipeline's per-seed state and results live."""
    return Path(save_dir) / "pipelines" / pipeline.name


def stage_overrides(stage: Stage, overrides: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The overrides that apply to ``stage``: plain keys apply to every stage, ``<stage>:<key>`` only to that one."""
    pairs = []
    for key, value in overrides:
        target, _, dotted = key.rpartition(":")
        if not target or target == stage.name:
            pairs.append((dotted, value))
    return pairs


def stage_config(stage: Stage, seed: int, state: SeedState, overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The resolved config of a stage for one seed: its file, its overrides, its inputs (exact checkpoint paths)."""
    pairs: list[tuple[str, Any]] = [("seed", seed), *stage.set.items()]
    for key, source in stage.inputs.items():
        paths = []
        for earlier in [source] if isinstance(source, str) else source:
            checkpoint = state.checkpoint(earlier)
            if checkpoint is None:
                raise ConfigError(f"stage {stage.name!r} needs the checkpoint of stage {earlier!r} (seed {seed}), "
                                  "which has not been trained")
            paths.append(str(checkpoint))
        pairs.append((key, paths[0] if isinstance(source, str) else paths))
    return resolve(apply_overrides(load_config(stage.config), [*pairs, *stage_overrides(stage, overrides)]))


def run_stage(stage: Stage, seed: int, state: SeedState, device: str | None = None,
              overrides: Sequence[tuple[str, Any]] = (), quiet: bool = True, log: Callable[[str], None] = print,
              **train_options: Any) -> RunResult | None:
    """Train one stage of one seed: skipped when finished (returns None), resumed from its last.pth when an earlier
    attempt was interrupted, else started in a new run directory recorded in ``state`` at once. ``overrides`` hold
    ``trainer.save_dir`` and the rest (see :func:`run_pipeline`); the result tells whether a stop signal ended it."""
    if state.finished(stage.name):
        log(f"seed {seed} {stage.name}: done ({state.stages[stage.name]['run_dir']})")
        return None
    checkpoint = state.checkpoint(stage.name)
    if checkpoint is not None:  # interrupted: continue its run directory
        log(f"seed {seed} {stage.name}: resuming {checkpoint}")
        config, resume_state = config_for_run(None, checkpoint)
        result = train(config, device, checkpoint, resume_state, quiet=quiet, **train_options)
    else:
        config = stage_config(stage, seed, state, overrides)
        log(f"seed {seed} {stage.name}: training {config['name']}")
        result = train(config, device, quiet=quiet,
                       on_run_dir=lambda run_dir: state.record(stage.name, run_dir, False), **train_options)
    if not result.interrupted and result.run_dir is not None:  # only rank 0 of a DDP job has the run directory
        state.record(stage.name, result.run_dir, True)
        log(f"seed {seed} {stage.name}: {result.checkpoint}")
    return result


def run_pipeline(pipeline: Pipeline, seeds: Sequence[int], device: str | None = None, save_dir: str | Path = SAVE_DIR,
                 overrides: Sequence[tuple[str, Any]] = (), quiet: bool = True, log: Callable[[str], None] = print,
                 **train_options: Any) -> dict[int, dict[str, Path]]:
    """Train every stage for every seed (finished stages are skipped, interrupted ones resumed); returns the run
    directories. ``overrides`` apply to every stage (e.g. the data directory), or to one with ``<stage>:<key>``;
    ``trainer.save_dir`` is ``save_dir``."""
    folder = state_folder(pipeline, save_dir)
    overrides = [("trainer.save_dir", str(save_dir)), *overrides]
    runs: dict[int, dict[str, Path]] = {}
    for seed in seeds:
        state = SeedState(folder, seed)
        for stage in pipeline.stages:
            result = run_stage(stage, seed, state, device, overrides, quiet, log, **train_options)
            if result is not None and result.interrupted:
                raise KeyboardInterrupt(f"interrupted in stage {stage.name!r} of seed {seed}; run the pipeline again "
                                        "to resume")
        runs[seed] = {name: Path(record["run_dir"]) for name, record in state.stages.items()}
    return runs


def evaluate_pipeline(pipeline: Pipeline, seeds: Sequence[int], device: str | None = None,
                      save_dir: str | Path = SAVE_DIR, folder: str | Path | None = None) -> pd.DataFrame:
    """Evaluate the stages listed in the pipeline's ``evaluate`` entries over the seeds' runs into one tidy table
    (``evaluation`` column: ``test`` for the uniform report, ``test_all`` for the test priors), written to
    ``<save_dir>/pipelines/<name>/results.csv`` (or ``<folder>/results.csv``: a sweep keeps each run's state there)."""
    folder = Path(folder) if folder is not None else state_folder(pipeline, save_dir)
    states = {seed: SeedState(folder, seed) for seed in seeds}
    frames = []
    for spec in pipeline.evaluate:
        checkpoints = [str(states[s].checkpoint(spec.stage)) for s in seeds if states[s].checkpoint(spec.stage)]
        if not checkpoints:
            raise ConfigError(f"no finished run of stage {spec.stage!r} for seeds {list(seeds)}; train the pipeline first")
        overrides = list(spec.set.items())
        if spec.uniform:
            frames.append(evaluate_uniform(EvalOptions(checkpoints, device, overrides, quiet=True, auto_out=False)).assign(
                evaluation="test", method=spec.label))
        for aggregation in spec.aggregations:
            options = EvalOptions(checkpoints, device, overrides, priors=spec.priors or pipeline.priors,
                                  posthoc=["none", *spec.posthoc], aggregation=aggregation, quiet=True, auto_out=False)
            frames.append(evaluate_priors(options).assign(evaluation="test_all", method=spec.label))
    results = pd.concat(frames, ignore_index=True)
    write_csv(results, folder / "results.csv")
    return results
