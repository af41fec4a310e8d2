"""``python train.py``: argument parsing, config resolution, run directory, then Trainer.fit()."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from data_loader.factory import build_data
from trainer.build import build_model, resolve_device
from trainer.distributed import init_distributed, shutdown_distributed
from trainer.trainer import Trainer, make_run_dir, write_run_config
from trainer.evaluator import masks_for
from utils.checkpoint import CheckpointError, load_checkpoint
from utils.config import load_config, parse_cli_value, resolve_config, set_by_path
from trainer.cost import expert_cost, is_multi_expert
from utils.flops import count_macs, count_parameters
from utils.registry import ConfigError

# Shortcut flags -> the config key they override.
OVERRIDE_FLAGS = {
    "seed": "seed", "epochs": "trainer.epochs", "batch_size": "data_loader.args.batch_size", "lr": "optimizer.args.lr",
    "num_experts": "arch.args.num_experts", "tau_list": "loss.args.tau_list", "data_dir": "data_loader.args.data_dir",
    "save_dir": "trainer.save_dir",
}


def build_parser() -> argparse.ArgumentParser:
    """The train.py argument parser."""
    p = argparse.ArgumentParser(description="Train a long-tailed recognition model from a JSON config.")
    p.add_argument("-c", "--config", help="JSON config file (e.g. configs/cifar100_ir100/balpoe_standard.json)")
    p.add_argument("-r", "--resume", help="checkpoint to resume exactly (e.g. saved/<name>/<run>/last.pth)")
    p.add_argument("-d", "--device", help="cpu, cuda, cuda:N or a GPU list like 0,1 (default: cuda if available)")
    p.add_argument("--seed", type=int, help="training seed (init, order, augmentation, mixup); overrides 'seed'")
    p.add_argument("--epochs", type=int, help="overrides trainer.epochs")
    p.add_argument("--batch_size", type=int, help="overrides data_loader.args.batch_size")
    p.add_argument("--lr", type=float, help="overrides optimizer.args.lr")
    p.add_argument("--num_experts", type=int, help="overrides arch.args.num_experts")
    p.add_argument("--tau_list", help="per-expert taus: '0,1,2', 'limits' or 'uniform' (uses loss.tau_min/tau_max)")
    p.add_argument("--data_dir", help="overrides data_loader.args.data_dir")
    p.add_argument("--save_dir", help="overrides trainer.save_dir (runs go to <save_dir>/<name>/seed<S>-<time>/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set combiner.args.alpha=0.2 (repeatable)")
    p.add_argument("--dry_run", action="store_true", help="build everything, print data/model summary and exit")
    p.add_argument("--limit_batches", type=int, help="cap the batches per epoch (smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or console log (train.log is still written)")
    return p


def apply_overrides(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Apply shortcut flags and --set KEY=VALUE pairs to a raw config."""
    for flag, path in OVERRIDE_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_by_path(config, path, parse_cli_value(value) if isinstance(value, str) and flag == "tau_list" else value)
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set trainer.epochs=5), got {item!r}")
        key, value = item.split("=", 1)
        set_by_path(config, key.strip(), parse_cli_value(value))
    return config


def dry_run_summary(config: dict[str, Any], device: Any) -> str:
    """Data counts per shot group, parameter count and MACs of the configured run."""
    data = build_data(config, device)
    counts = data.cls_num_list
    masks = masks_for(counts, config["evaluation"])
    lines = [f"data set: {config['data_loader']['type']}  train images: {sum(counts)}  test images: {len(data.test_set)}",
             f"classes: {len(counts)}  largest: {max(counts)}  smallest: {min(counts)}  imbalance ratio: "
             f"{max(counts) / max(min(counts), 1):.1f}"]
    for group, mask in masks.items():
        n_img = sum(c for c, m in zip(counts, mask.tolist()) if m)
        lines.append(f"  {group:<7} {int(mask.sum()):>5} classes {n_img:>8} images")
    model = build_model(config, data.train_set.num_classes, data.train_set.image_shape[0], counts)
    shape = data.train_set.image_shape
    macs = expert_cost(model, shape).all_experts if is_multi_expert(model) else count_macs(model, shape)
    lines.append(f"model: {config['arch']['type']}  experts: {getattr(model, 'num_experts', 1)}  "
                 f"parameters: {count_parameters(model):,}  MACs/image (all experts): {macs / 1e9:.4f} G")
    lines.append(f"steps/epoch: {len(data.train_loader)}  epochs: {config['trainer']['epochs']}")
    return "\n".join(lines)


def train_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of train.py; returns a process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _train(args)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    """Resolve the config and run (or dry-run) training."""
    if not args.config and not args.resume:
        raise ConfigError("give a config with -c CONFIG or a checkpoint to resume with -r CHECKPOINT")
    resume_state = None
    if args.resume:
        resume_state = load_checkpoint(args.resume)
        config = json.loads(json.dumps(resume_state["config"]))
        if args.config:
            config.update(load_config(args.config))  # like the reference: -c replaces whole top-level sections
    else:
        config = load_config(args.config)
    config = resolve_config(apply_overrides(config, args))
    ctx, device = init_distributed(resolve_device(args.device))  # torchrun: join the process group
    try:
        if args.dry_run:
            if ctx.is_primary:
                print(dry_run_summary(config, device))
            return 0
        run_dir = None
        if ctx.is_primary:  # only rank 0 writes files
            if resume_state is not None:
                run_dir = Path(args.resume).resolve().parent
            else:
                run_dir = make_run_dir(config["trainer"]["save_dir"], config["name"], config["seed"])
            write_run_config(run_dir, config)
        trainer = Trainer(config, device, run_dir, resume_state, args.limit_batches,
                          quiet=args.quiet or not ctx.is_primary, dist=ctx)
        trainer.logger.info(f"run directory: {run_dir}")
        if ctx.is_distributed:
            batch = config["data_loader"]["args"].get("batch_size", 128)
            trainer.logger.info(f"DDP: {ctx.world_size} processes x {trainer.data.train_loader.batch_size} images = "
                                f"global batch {batch} at lr {config['optimizer']['args'].get('lr')}")
        result = trainer.fit()
    finally:
        shutdown_distributed()
    if result.get("interrupted"):
        return 130
    if run_dir is not None:
        trainer.logger.info(f"done: {run_dir / 'last.pth'}")
    return 0
