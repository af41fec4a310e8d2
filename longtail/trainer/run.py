"""One training run from a resolved config: validate, create the run directory, run the config's stage.

The library side of ``train.py`` (command-line parsing lives in longtail/cli/train.py) and of the Python API.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from longtail.core.build import build_model, build_without_data, checkpoint_path, parameter_line, resolve, stage_class
from longtail.core.cost import expert_cost, is_multi_expert
from longtail.core.hooks import build_sections
from longtail.core.logits import masks_for
from longtail.data_loader.factory import build_data
from longtail.trainer.distributed import init_distributed, shutdown_distributed
from longtail.trainer.stages import make_run_dir, write_run_config
from longtail.utils.checkpoint import load_checkpoint, remove_stale_temp_files
from longtail.utils.config import apply_overrides
from longtail.utils.device import resolve_device, set_threads
from longtail.utils.errors import CheckpointError, ConfigError
from longtail.utils.flops import count_macs, count_parameters


@dataclass
class RunResult:
    """Where a run wrote its files and how it ended."""

    run_dir: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        """True when Ctrl-C stopped the run (last.pth holds the state to resume from)."""
        return bool(self.metrics.get("interrupted"))

    @property
    def checkpoint(self) -> Path | None:
        """The run's last.pth."""
        return self.run_dir / "last.pth" if self.run_dir is not None else None



def batch_line(world_size: int, per_process: int, accumulate: int, lr: object) -> str:
    """One log line that says how the effective batch is made (processes x images x accumulated micro-batches)."""
    parts = [f"{world_size} process{'es' if world_size > 1 else ''}", f"{per_process} images"]
    if accumulate > 1:
        parts.append(f"{accumulate} accumulated micro-batches")
    return f"batch: {' x '.join(parts)} = {world_size * per_process * accumulate} images per update at lr {lr}"

def config_for_run(config: dict[str, Any] | None, resume: str | Path | None,
                   overrides: Sequence[tuple[str, Any]] = ()) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(resolved config, resume state): a raw config, or a checkpoint's own config to resume (a given config then
    replaces whole top-level sections, as in the reference code), plus dotted-key overrides."""
    resume_state = None
    if resume is not None:
        resume_state = load_checkpoint(resume)
        stored = json.loads(json.dumps(resume_state["config"]))
        config = {**stored, **(config or {})}
    if config is None:
        raise ConfigError("give a config with -c CONFIG or a checkpoint to resume with -r CHECKPOINT")
    return resolve(apply_overrides(json.loads(json.dumps(config)), overrides)), resume_state


def dry_run_summary(config: dict[str, Any], device: torch.device) -> str:
    """Build everything a real run builds (data, model, earlier stages' weights, teacher, loss, optimizer), then
    summarise: data counts per shot group, parameter count and MACs. Nothing is written."""
    build_without_data(config)  # loss, combiner, sections and stage checks first: fast errors before reading data
    check_run_inputs(config)
    check_save_dir(config)
    stage = stage_class(config)(config, device, None, None, quiet=True)
    data = getattr(stage, "data", None) or build_data(config, device)
    counts = data.cls_num_list
    masks = masks_for(counts, config["evaluation"])
    lines = [f"data set: {config['data_loader']['type']}  train images: {sum(counts)}  test images: {len(data.test_set)}",
             f"classes: {len(counts)}  largest: {max(counts)}  smallest: {min(counts)}  imbalance ratio: "
             f"{max(counts) / max(min(counts), 1):.1f}"]
    for group, mask in masks.items():
        n_img = sum(c for c, m in zip(counts, mask.tolist()) if m)
        lines.append(f"  {group:<7} {int(mask.sum()):>5} classes {n_img:>8} images")
    net = build_model(config, data.train_set.num_classes, data.train_set.image_shape[0], counts)
    shape = data.train_set.image_shape
    macs = expert_cost(net, shape).all_experts if is_multi_expert(net) else count_macs(net, shape)
    lines.append(f"model: {config['arch']['type']}  experts: {getattr(net, 'num_experts', 1)}  "
                 f"parameters: {count_parameters(net):,}  MACs/image (all experts): {macs / 1e9:.4f} G")
    lines.append(f"stage: {stage_class(config).__name__}  steps/epoch: {len(data.train_loader)}  "
                 f"epochs: {config['trainer']['epochs']}")
    return "\n".join(lines)


def check_run_inputs(config: dict[str, Any], resuming: bool = False) -> None:
    """Everything that can fail before a run starts: the stage's own checks and the files its sections read
    (an earlier stage's checkpoint is not needed when resuming: the weights come from the run's own checkpoint)."""
    stage = stage_class(config)
    stage.validate_config(config)
    if resuming:
        return
    for section in build_sections(config):
        for key, path in section.checkpoints().items():
            if not checkpoint_path(path).is_file():
                raise CheckpointError(f"{key}: {path} not found. Train the earlier stage first and point to its "
                                      f"checkpoint (a run directory means its last.pth), e.g. --set {key.split('[')[0]}=...")
    stage.check_inputs(config)


def check_save_dir(config: dict[str, Any]) -> None:
    """trainer.save_dir must be a folder (or not exist yet)."""
    save_dir = Path(config["trainer"]["save_dir"])
    for folder in (save_dir, *save_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"trainer.save_dir {save_dir}: {folder} is a file, not a folder; choose another "
                              "--save_dir")


def train(config: dict[str, Any], device: str | torch.device | None = None, resume: str | Path | None = None,
          resume_state: dict[str, Any] | None = None, limit_batches: int | None = None,
          limit_val_batches: int | None = None, quiet: bool = False,
          callbacks: Sequence[Callable[[Any, int, int], None]] = (),
          on_run_dir: Callable[[Path], None] | None = None, threads: int | None = None,
          run_dir: str | Path | None = None) -> RunResult:
    """Run the stage of a resolved ``config`` in a new run directory (or continue ``resume``'s run).

    Everything is validated and built (data, model, earlier stages' weights) before the run directory is created,
    so a run that cannot start leaves nothing behind. ``on_run_dir`` is told the run directory as soon as it exists
    (pipelines record it, so an interrupted stage is resumed rather than restarted). ``threads``: CPU intra-op
    threads (default: chosen from the usable cores and the machine's load, utils.device.choose_threads). ``run_dir``:
    this exact folder instead of ``<save_dir>/<name>/seed<S>-<time>/`` (scripts that evaluate what they trained).
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    threads_line = set_threads(threads)
    if resume_state is not None:  # a resumed run keeps the options it was started with unless told otherwise
        stored = resume_state.get("run_options") or {}
        limit_batches = limit_batches if limit_batches is not None else stored.get("limit_batches")
        limit_val_batches = limit_val_batches if limit_val_batches is not None else stored.get("limit_val_batches")
    check_run_inputs(config, resuming=resume is not None)
    if resume is None:
        check_save_dir(config)
        if run_dir is not None and (Path(run_dir) / "last.pth").exists():
            raise ConfigError(f"--run_dir {run_dir} already holds a run (last.pth); resume it with -r "
                              f"{Path(run_dir) / 'last.pth'} or choose another folder")
    ctx, device = init_distributed(device)  # torchrun: join the process group
    try:
        stage = stage_class(config)(config, device, None, resume_state, limit_batches, quiet or not ctx.is_primary,
                                    callbacks, dist=ctx, limit_val_batches=limit_val_batches)
        target, run_dir, stale = run_dir, None, []
        if ctx.is_primary:  # only rank 0 writes files
            if resume is not None:
                run_dir = Path(resume).resolve().parent
                stale = remove_stale_temp_files(run_dir)
            elif target is not None:
                run_dir = Path(target)
                run_dir.mkdir(parents=True, exist_ok=True)
            else:
                run_dir = make_run_dir(config["trainer"]["save_dir"], config["name"], config["seed"])
            write_run_config(run_dir, config)
            stage.attach_run_dir(run_dir)
            if on_run_dir is not None:
                on_run_dir(run_dir)
        for path in stale:
            stage.logger.info(f"removed {path.name}, left by an interrupted checkpoint write")
        stage.logger.info(f"run directory: {run_dir}")
        stage.logger.info(threads_line)
        if limit_batches or limit_val_batches:
            stage.logger.info(f"smoke run: at most {limit_batches or 'all'} training / {limit_val_batches or 'all'} "
                              "validation batches per epoch (kept when resumed)")
        if stage.model is not None:  # trainable parameters and their fraction (also stored in every checkpoint)
            stage.logger.info(parameter_line(stage.model))
        accumulate = config["trainer"]["accumulate_steps"]
        if ctx.is_distributed or accumulate > 1:
            stage.logger.info(batch_line(ctx.world_size, stage.data.train_loader.batch_size, accumulate,
                                         config["optimizer"]["args"].get("lr")))
        metrics = stage.fit()
        if run_dir is not None and not metrics.get("interrupted"):
            stage.logger.info(f"done: {run_dir / 'last.pth'}")
        return RunResult(run_dir, metrics)
    finally:
        shutdown_distributed()
