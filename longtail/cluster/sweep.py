"""Sweeps: a grid of configs / pipelines x seeds x overrides, written as a small JSON or YAML file, turned into a
graph of jobs (one per stage of each seed, one evaluation per grid point) that a launcher runs.

    {"name": "fmnist_methods", "seeds": "1-5",
     "runs": [{"pipeline": "../pipelines/fmnist_ir100_decoupling.json"},
              {"config": "../fmnist_ir100/balpoe.json", "label": "balpoe"}],
     "grid": {"optimizer.args.lr": [0.05, 0.1]},           # optional: every run x every combination
     "set": {"trainer.epochs": 50},                          # every stage of every run
     "resources": {"gpus_per_node": 1, "cpus_per_task": 8, "timeout_min": 600, "partition": "gpu"},
     "train": {"device": "cuda", "limit_batches": null},
     "table": {"priors": ["forward50", "uniform", "backward50"], "metrics": ["all"]},
     "evaluate": true}                                       # false: train only (no evaluation jobs, no table)

Paths are relative to the sweep file (or shipped configs). Each grid point is a *variant*: a pipeline (a config is a
one-stage pipeline) with its overrides; its per-seed state (the exact run directory of every stage, as
longtail/pipeline.py keeps it) and its results.csv live in ``<save_dir>/sweeps/<name>/<variant>/``. A stage's job
depends on the jobs of the stages it reads (pipeline ``inputs``), so a stage never looks for "the newest folder": it
reads the path its input stage recorded. The sweep is frozen into ``<sweep dir>/sweep.json`` when it is launched;
jobs read only that file.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from longtail.pipeline import Evaluation, Pipeline, Stage, load_pipeline, parse_seeds, stage_overrides, state_folder
from longtail.utils.config import apply_overrides, load_config
from longtail.utils.defaults import SAVE_DIR
from longtail.utils.errors import ConfigError
from longtail.utils.resources import find_shipped

SWEEP_KEYS = {"name", "description", "seeds", "runs", "grid", "set", "resources", "train", "table", "evaluate"}
RUN_KEYS = {"pipeline", "config", "label", "set", "resources"}
TRAIN_KEYS = {"device", "limit_batches", "limit_val_batches"}
TABLE_KEYS = {"priors", "metrics"}
# cluster resources of a job (submitit's names; the SLURM launcher maps them onto sbatch options)
RESOURCE_KEYS = {"nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "partition",
                 "account", "qos", "constraint", "exclude", "setup", "additional_parameters", "signal_delay_s",
                 "max_requeues"}
DEFAULT_RESOURCES = {"nodes": 1, "timeout_min": 720, "signal_delay_s": 120, "max_requeues": 10}
SWEEP_FILE = "sweep.json"


@dataclass
class Variant:
    """One grid point: a pipeline or a config with its overrides; ``method`` names its rows in the results table."""

    name: str
    source: str  # absolute path of the pipeline or config file
    kind: str  # "pipeline" or "config"
    overrides: list[tuple[str, Any]]
    folder: str  # per-seed state and results.csv
    resources: dict[str, Any] = field(default_factory=dict)
    method_prefix: str = ""  # the run's label (pipelines: "<label>/"), prepended to the evaluation labels
    method_suffix: str = ""  # the grid point (e.g. "-lr0.05"), appended to them

    def pipeline(self) -> Pipeline:
        """The variant's stages and evaluations (a config is one stage, "train", evaluated as the variant's method)."""
        if self.kind == "config":
            label = self.method_prefix + self.method_suffix
            return Pipeline(self.name, Path(self.source), [Stage("train", Path(self.source))],
                            evaluate=[Evaluation("train", label)])
        pipeline = load_pipeline(self.source)
        evaluate = pipeline.evaluate or [Evaluation(pipeline.stages[-1].name, pipeline.stages[-1].name)]
        return replace(pipeline, name=self.name, evaluate=[
            replace(e, label=f"{self.method_prefix}{e.label}{self.method_suffix}") for e in evaluate])

    def methods(self) -> list[str]:
        """The method labels of this variant's result rows."""
        return list(dict.fromkeys(e.label for e in self.pipeline().evaluate))


@dataclass(frozen=True)
class Job:
    """One job of the graph: a stage of one seed (``kind`` "stage") or a variant's evaluation ("evaluate")."""

    key: str
    kind: str
    variant: str
    seed: int | None = None
    stage: str | None = None
    deps: tuple[str, ...] = ()


@dataclass
class Sweep:
    """A loaded sweep: its variants, seeds, where it lives, and how its jobs train and are resourced."""

    name: str
    folder: str  # the sweep directory: sweep.json, job records, logs, table
    save_dir: str
    seeds: list[int]
    variants: list[Variant]
    resources: dict[str, Any] = field(default_factory=dict)  # every job (sweep file)
    cli_resources: dict[str, Any] = field(default_factory=dict)  # command line: wins over everything
    train: dict[str, Any] = field(default_factory=dict)
    table: dict[str, Any] = field(default_factory=dict)
    evaluate: bool = True

    def variant(self, name: str) -> Variant:
        """The variant called ``name``."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ConfigError(f"sweep {self.name}: no variant {name!r} ({', '.join(v.name for v in self.variants)})")

    def to_json(self) -> dict[str, Any]:
        """Plain data (sweep.json)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Sweep":
        """The inverse of :meth:`to_json`."""
        variants = [Variant(**{**v, "overrides": [tuple(pair) for pair in v["overrides"]]}) for v in data["variants"]]
        return cls(**{**data, "variants": variants})


def freeze(sweep: Sweep) -> Path:
    """Write ``<sweep dir>/sweep.json`` (what every job reads); a relaunch must describe the same sweep."""
    path = Path(sweep.folder) / SWEEP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = sweep.to_json()
    if path.is_file():
        old = json.loads(path.read_text())
        if [v["name"] for v in old["variants"]] != [v["name"] for v in data["variants"]] or \
                [v["overrides"] for v in old["variants"]] != json.loads(json.dumps([v["overrides"] for v in data["variants"]])):
            raise ConfigError(f"{path} describes another sweep (other runs or overrides) under the same name; rename "
                              "the sweep ('name') or use another --save_dir")
        data["seeds"] = sorted(set(old["seeds"]) | set(data["seeds"]))  # more seeds later: one table over all
        sweep.seeds = data["seeds"]
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_sweep(folder: str | Path) -> Sweep:
    """The frozen sweep of a sweep directory."""
    path = Path(folder) / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a launched sweep (no {SWEEP_FILE}); launch it with lt-sweep run SWEEP_FILE")
    return Sweep.from_json(json.loads(path.read_text()))


def read_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file as a dict: JSON, or YAML for .yaml / .yml."""
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    else:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold an object with 'name', 'runs' and 'seeds'")
    return data


def check_keys(where: str, block: Any, allowed: set[str]) -> dict[str, Any]:
    """``block`` must be an object with keys from ``allowed``."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be an object with keys from {', '.join(sorted(allowed))}")
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")
    return dict(block)


def grid_points(grid: dict[str, list[Any]]) -> list[list[tuple[str, Any]]]:
    """Every combination of the grid's values, as override pairs (one empty point without a grid)."""
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [list(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def grid_suffix(pairs: Sequence[tuple[str, Any]]) -> str:
    """'-lr0.05-num_experts3' for a grid point (empty without one)."""
    parts = []
    for key, value in pairs:
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"-{key.split('.')[-1]}{'' if text[:1].isdigit() or text[:1] == '-' else '_'}{text}")
    return "".join(parts)


def resolve_path(text: str, base: Path) -> Path:
    """A file named in a sweep: relative to the sweep file, else to the working directory, else a shipped config."""
    for candidate in (base / text, Path(text), find_shipped(text, "configs")):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{text}: no such file (relative to {base}, to the working directory, or among the shipped "
                      "configs)")


def sweep_folder(save_dir: str | Path, name: str) -> Path:
    """Where a sweep called ``name`` lives."""
    return Path(save_dir) / "sweeps" / name


def load_sweep(path: str | Path, save_dir: str | Path = SAVE_DIR, seeds: str | Sequence[int] | None = None,
               overrides: Sequence[tuple[str, Any]] = (), resources: dict[str, Any] | None = None,
               train: dict[str, Any] | None = None) -> Sweep:
    """Read and check a sweep file; ``seeds``, ``overrides`` (--set, --data_dir), ``resources`` and ``train``
    options from the command line win over the file's."""
    path = find_shipped(path, "configs")  # configs/sweeps/<name>.json from any working directory
    data = check_keys(str(path), read_sweep_file(path), SWEEP_KEYS)
    name = str(data.get("name") or path.stem)
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ConfigError(f"{path}: 'runs' must be a non-empty list of {{\"pipeline\": FILE}} or {{\"config\": FILE}}")
    folder = sweep_folder(save_dir, name)
    common = [("trainer.save_dir", str(save_dir)), *dict(data.get("set") or {}).items()]
    variants: list[Variant] = []
    for number, run in enumerate(runs, start=1):
        run = check_keys(f"{path}: runs[{number}]", run, RUN_KEYS)
        kinds = [k for k in ("pipeline", "config") if k in run]
        if len(kinds) != 1:
            raise ConfigError(f"{path}: runs[{number}] needs exactly one of 'pipeline' and 'config'")
        kind = kinds[0]
        source = resolve_path(run[kind], path.parent)
        label = run.get("label") or (load_pipeline(source).name if kind == "pipeline" else source.stem)
        prefix = (f"{run['label']}/" if run.get("label") else "") if kind == "pipeline" else label
        for point in grid_points(dict(data.get("grid") or {})):
            suffix = grid_suffix(point)
            variant_name = f"{label}{suffix}".replace("/", "_")
            pairs = [*common, *point, *dict(run.get("set") or {}).items(), *overrides]
            variants.append(Variant(variant_name, str(source), kind, pairs, str(folder / variant_name),
                                    check_keys(f"{path}: runs[{number}].resources", run.get("resources"), RESOURCE_KEYS),
                                    prefix, suffix))
    sweep = Sweep(name, str(folder), str(save_dir), parse_seeds(seeds if seeds is not None else data.get("seeds", 1)),
                  variants, check_keys(f"{path}: resources", data.get("resources"), RESOURCE_KEYS),
                  check_keys("resources (command line)", {k: v for k, v in (resources or {}).items() if v is not None},
                             RESOURCE_KEYS),
                  {**check_keys(f"{path}: train", data.get("train"), TRAIN_KEYS),
                   **{k: v for k, v in (train or {}).items() if v is not None}},
                  check_keys(f"{path}: table", data.get("table"), TABLE_KEYS), bool(data.get("evaluate", True)))
    check_unique(sweep)
    return sweep


def pipeline_sweep(pipeline_path: str | Path, seeds: Sequence[int], save_dir: str | Path = SAVE_DIR,
                   overrides: Sequence[tuple[str, Any]] = (), resources: dict[str, Any] | None = None,
                   train: dict[str, Any] | None = None, evaluate: bool = False) -> Sweep:
    """One pipeline as a sweep of one variant whose state is the pipeline runner's own
    (``<save_dir>/pipelines/<name>/seed<S>.json``): ``lt-pipeline --launcher`` and the in-process runner share it."""
    pipeline = load_pipeline(pipeline_path)
    folder = state_folder(pipeline, save_dir)
    variant = Variant(pipeline.name, str(Path(pipeline_path).resolve()), "pipeline",
                      [("trainer.save_dir", str(save_dir)), *overrides], str(folder))
    return Sweep(pipeline.name, str(folder), str(save_dir), list(seeds), [variant], {},
                 check_keys("resources (command line)", {k: v for k, v in (resources or {}).items() if v is not None},
                            RESOURCE_KEYS),
                 {k: v for k, v in (train or {}).items() if v is not None}, {"priors": pipeline.priors}, evaluate)


def check_unique(sweep: Sweep) -> None:
    """Variant names and the method labels of the table rows must not collide."""
    seen: dict[str, str] = {}
    for variant in sweep.variants:
        if variant.name in seen:
            raise ConfigError(f"sweep {sweep.name}: two runs are both called {variant.name!r}; give one a 'label'")
        seen[variant.name] = variant.name
    methods: dict[str, str] = {}
    for variant in sweep.variants:
        for method in variant.methods():
            if method in methods:
                raise ConfigError(f"sweep {sweep.name}: runs {methods[method]!r} and {variant.name!r} both give rows "
                                  f"labelled {method!r}; set 'label' on one of the runs")
            methods[method] = variant.name


def job_graph(sweep: Sweep) -> list[Job]:
    """Every job in an order where dependencies come first: the stages of each seed of each variant (a stage depends
    on the stages whose checkpoints it reads), then each variant's evaluation (after all its stages)."""
    jobs: list[Job] = []
    for variant in sweep.variants:
        pipeline = variant.pipeline()
        stage_keys = []
        for seed in sweep.seeds:
            for stage in pipeline.stages:
                sources = [s for source in stage.inputs.values() for s in ([source] if isinstance(source, str) else source)]
                deps = tuple(f"{variant.name}/seed{seed}/{s}" for s in dict.fromkeys(sources))
                key = f"{variant.name}/seed{seed}/{stage.name}"
                jobs.append(Job(key, "stage", variant.name, seed, stage.name, deps))
                stage_keys.append(key)
        if sweep.evaluate:
            jobs.append(Job(f"{variant.name}/evaluate", "evaluate", variant.name, deps=tuple(stage_keys)))
    return jobs


def stage_of(sweep: Sweep, job: Job) -> tuple[Variant, Pipeline, Stage | None]:
    """The variant, its pipeline and (for a stage job) the stage of ``job``."""
    variant = sweep.variant(job.variant)
    pipeline = variant.pipeline()
    stage = next((s for s in pipeline.stages if s.name == job.stage), None)
    if job.kind == "stage" and stage is None:
        raise ConfigError(f"sweep {sweep.name}: {variant.name} has no stage {job.stage!r} (its pipeline changed since "
                          "the sweep was launched?)")
    return variant, pipeline, stage


def job_resources(sweep: Sweep, job: Job) -> dict[str, Any]:
    """The cluster resources of ``job``: defaults < the stage config (one GPU and one task per ``n_gpu``, a core per
    data worker) < the sweep file < the run < the pipeline stage < the command line. Evaluation: one task."""
    variant, _, stage = stage_of(sweep, job)
    on_cpu = str(sweep.train.get("device") or "").startswith("cpu")
    if stage is not None:
        pairs = [*stage.set.items(), *stage_overrides(stage, variant.overrides)]
        config = apply_overrides(load_config(stage.config), pairs)
        gpus = 0 if on_cpu else int(config.get("n_gpu", 1))
        ddp = config.get("trainer", {}).get("parallel", "ddp") == "ddp"
        workers = int((config.get("data_loader", {}).get("args") or {}).get("num_workers", 0))
        derived = {"gpus_per_node": gpus, "tasks_per_node": max(1, gpus) if ddp else 1, "cpus_per_task": workers + 1}
        resources = {**DEFAULT_RESOURCES, **derived, **sweep.resources, **variant.resources, **stage.resources,
                     **sweep.cli_resources}
    else:
        resources = {**DEFAULT_RESOURCES, "gpus_per_node": 0 if on_cpu else 1, "cpus_per_task": 1, **sweep.resources,
                     **variant.resources, **sweep.cli_resources}
        resources.update(nodes=1, tasks_per_node=1, gpus_per_node=min(1, int(resources.get("gpus_per_node") or 0)))
    return resources
