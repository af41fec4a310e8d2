"""Class-Balanced Experts, last stage (METHODS.md §8.4): fit the joint calibration module on held-out expert logits.

``python -m trainer.cbe -c configs/<set>/cbe_calibration.json --experts MANY.pth MEDIUM.pth FEW.pth``

The three group experts (trained with train.py on ``subset`` data, ``group`` many / medium / few) are loaded into the
``class_balanced_experts`` model; their raw logits on the held-out part of the training split (the ``val`` split of
the ``subset`` data set: images no expert was trained on) are computed once, and only the per-output temperatures and
biases are trained on them with the configured loss / optimizer / schedule. The result is a normal checkpoint
(``<save_dir>/<name>/seed<S>-<time>/last.pth``) that test.py and test_all_*.py evaluate like any other model.
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from data_loader.datasets import DATASETS, ImageTensorDataset
from data_loader.factory import build_data, build_dataset, split_loader_args
from data_loader.loader import BatchLoader
from model.registry import MODELS
from trainer.build import build_criterion, build_model, build_optimizer, build_scheduler, resolve_device
from trainer.cli import apply_overrides
from trainer.evaluator import masks_for, validation_metrics
from trainer.trainer import make_run_dir, write_run_config
from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, strip_prefixes
from utils.config import load_config, resolve_config, set_by_path
from utils.logging import get_logger
from utils.registry import ConfigError
from utils.seed import get_rng_state, seed_everything, torch_generator
from utils.tables import write_csv

STREAM_ORDER = 31
# data_loader.args of the experts that must equal the calibration config's, so the held-out images are unseen
SHARED_DATA_KEYS = ("holdout_fraction", "holdout_max_per_class", "seed", "many_threshold", "few_threshold")
LOCAL_BASE_KEYS = ("data_dir", "download")  # may differ between machines


def _defaults(registry: Any, name: str) -> dict[str, Any]:
    """Default values of a registered constructor's arguments."""
    return {k: p.default for k, p in registry.signature(name).items() if p.default is not inspect.Parameter.empty}


def _data_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``subset`` data set arguments of a config, with the builder's defaults filled in."""
    block = config["data_loader"]
    if block.get("type") != "subset":
        raise ConfigError("Class-Balanced Experts need data_loader.type 'subset' (holdout_fraction > 0), got "
                          f"{block.get('type')!r}")
    return {**_defaults(DATASETS, "subset"), **split_loader_args(block)[0]}


def _portable_base(base: dict[str, Any]) -> dict[str, Any]:
    """The base data set block without machine-specific keys."""
    return {"type": base.get("type"), "args": {k: v for k, v in (base.get("args") or {}).items() if k not in LOCAL_BASE_KEYS}}


def check_expert(expert_config: dict[str, Any], config: dict[str, Any], group: str, path: Path) -> float:
    """Verify an expert checkpoint fits the calibration config; returns its open-set ratio r."""
    mine, theirs = _data_args(config), _data_args(expert_config)
    if theirs.get("group") != group:
        raise ConfigError(f"{path} is the {theirs.get('group')!r} expert but arch.args.groups expects {group!r} at "
                          "this position; pass the experts in the order of arch.args.groups")
    for key in SHARED_DATA_KEYS:
        if theirs.get(key) != mine.get(key):
            raise ConfigError(f"{path}: data_loader.args.{key} is {theirs.get(key)!r} there but {mine.get(key)!r} here; "
                              "experts and calibration must use the same held-out split and groups")
    if _portable_base(theirs["base"]) != _portable_base(mine["base"]):
        raise ConfigError(f"{path} was trained on a different data set ({_portable_base(theirs['base'])}) than "
                          f"data_loader.args.base here ({_portable_base(mine['base'])})")
    return float(theirs["open_ratio"])


def load_experts(model: nn.Module, config: dict[str, Any]) -> None:
    """Load ensemble.checkpoints into the model's group experts and set their "other" pre-adjustment."""
    groups = config["arch"].get("args", {}).get("groups", _defaults(MODELS, config["arch"]["type"]).get("groups"))
    paths = (config.get("ensemble") or {}).get("checkpoints")
    if not isinstance(paths, list) or len(paths) != len(model.experts):
        raise ConfigError(f"ensemble.checkpoints must list {len(model.experts)} expert checkpoints in the order "
                          f"{list(groups)} (use --experts A B C), got {paths!r}")
    ratios = []
    for expert, group, path in zip(model.experts, groups, map(Path, paths)):
        if not path.is_file():
            raise CheckpointError(f"expert checkpoint {path} not found: train the {group!r} expert first and pass the "
                                  "checkpoints with --experts MANY.pth MEDIUM.pth FEW.pth")
        state = load_checkpoint(path)
        ratios.append(check_expert(state["config"], config, group, path))
        try:
            expert.load_state_dict(strip_prefixes(state["model"]))
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: weights do not fit arch.args.expert_arch (it must equal the expert's own "
                                  f"arch): {str(exc).splitlines()[0]}") from None
    model.calibration.set_open_ratios(ratios)


@torch.inference_mode()
def held_out_logits(model: nn.Module, dataset: ImageTensorDataset, batch_size: int,
                    channels_last: bool) -> list[torch.Tensor]:
    """Raw logits of every group expert on ``dataset`` (computed once), [(N, k_e + 1)]."""
    model.eval()
    chunks: list[list[torch.Tensor]] = [[] for _ in model.experts]
    for images, _ in BatchLoader(dataset, batch_size, "sequential", None, channels_last=channels_last).batches(0):
        for store, logits in zip(chunks, model.expert_logits(images)):
            store.append(logits.float())
    return [torch.cat(store) for store in chunks]


def fit_calibration(model: nn.Module, config: dict[str, Any], logits: list[torch.Tensor], targets: torch.Tensor,
                    criterion: nn.Module, log: Any) -> tuple[list[dict[str, Any]], Any, Any]:
    """Train the calibration parameters on cached expert logits; returns (history, optimizer, scheduler)."""
    optimizer, seed = build_optimizer(config, model), int(config["seed"])
    scheduler = build_scheduler(config, optimizer)
    batch_size = int(split_loader_args(config["data_loader"])[1].get("batch_size", 256))
    history = []
    for epoch in range(1, config["trainer"]["epochs"] + 1):
        model.train()
        order = torch.randperm(len(targets), generator=torch_generator("cpu", seed, epoch, STREAM_ORDER)).to(targets.device)
        loss_sum = correct = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            log_probs = model.calibration([z[idx] for z in logits])
            loss = criterion(log_probs.unsqueeze(1), targets[idx]).total
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += float((log_probs.argmax(dim=1) == targets[idx]).sum())
        history.append({"epoch": epoch, "loss": loss_sum / len(order), "accuracy": 100.0 * correct / len(order),
                        "lr": optimizer.param_groups[0]["lr"]})
        scheduler.step()
        if epoch % 10 == 0 or epoch == config["trainer"]["epochs"]:
            log(f"epoch {epoch}/{config['trainer']['epochs']} | loss {history[-1]['loss']:.4f} | "
                f"held-out acc {history[-1]['accuracy']:.2f}%")
    return history, optimizer, scheduler


def calibrate(config: dict[str, Any], device: torch.device, run_dir: Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """Build the combined model, load the experts, fit the calibration and save ``run_dir/last.pth``."""
    logger = get_logger("lt.cbe", run_dir / "train.log" if run_dir else None, quiet=quiet)
    seed_everything(int(config["seed"]), config["trainer"]["deterministic"])
    data_args = _data_args(config)
    if data_args.get("group") is not None or data_args["holdout_fraction"] <= 0:
        raise ConfigError("the calibration config needs data_loader.args.group null (all classes) and "
                          "holdout_fraction > 0 (the held-out part it is fitted on)")
    base = data_args["base"]
    full_counts = DATASETS.build(base, "data_loader.args.base", split="train").cls_num_list
    held = build_dataset(config, "val").to(device)
    model = build_model(config, held.num_classes, held.image_shape[0], full_counts).to(device)
    load_experts(model, config)
    channels_last = bool(config["trainer"]["channels_last"])
    logits = held_out_logits(model, held, config["evaluation"]["test_batch_size"], channels_last)
    logger.info(f"held-out part: {len(held)} images; expert outputs {[z.shape[1] for z in logits]}")
    criterion = build_criterion(config, held.cls_num_list, 1).to(device)
    history, optimizer, scheduler = fit_calibration(model, config, logits, held.targets, criterion, logger.info)
    test = build_data(config, device, train=False)
    history[-1].update(validation_metrics(model, test.test_loader, masks_for(full_counts, config["evaluation"])))
    logger.info(f"test accuracy {history[-1]['val_accuracy']:.2f}% (many {history[-1]['val_many']:.1f} / medium "
                f"{history[-1]['val_medium']:.1f} / few {history[-1]['val_few']:.1f})".replace("nan", "n/a"))
    state = {"epoch": config["trainer"]["epochs"], "step": 0, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(), "scaler": None,
             "criterion": criterion.state_dict(), "config": config, "cls_num_list": full_counts,
             "monitor_best": -math.inf, "rng": get_rng_state(), "history": history}
    if run_dir is not None:
        save_checkpoint(state, run_dir / "last.pth")
        write_csv(history, run_dir / "history.csv")
        logger.info(f"done: {run_dir / 'last.pth'}")
    return state


def cbe_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trainer.cbe``."""
    p = argparse.ArgumentParser(description="Fit the Class-Balanced Experts calibration on held-out expert logits.")
    p.add_argument("-c", "--config", required=True, help="calibration config (e.g. configs/cifar100_ir100/cbe_calibration.json)")
    p.add_argument("--experts", nargs="+", help="expert checkpoints in the order of arch.args.groups (sets ensemble.checkpoints)")
    p.add_argument("-d", "--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--seed", type=int, help="overrides 'seed'")
    p.add_argument("--epochs", type=int, help="overrides trainer.epochs")
    p.add_argument("--data_dir", help="overrides data_loader.args.base.args.data_dir")
    p.add_argument("--save_dir", help="overrides trainer.save_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no console log (train.log is still written)")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        data_dir, args.data_dir = args.data_dir, None  # the data directory lives in the wrapped data set's block
        config = apply_overrides(config, args)
        if data_dir:
            set_by_path(config, "data_loader.args.base.args.data_dir", data_dir)
        if args.experts:
            set_by_path(config, "ensemble.checkpoints", list(args.experts))
        config = resolve_config(config)
        device = resolve_device(args.device)
        run_dir = make_run_dir(config["trainer"]["save_dir"], config["name"], config["seed"])
        write_run_config(run_dir, config)
        calibrate(config, device, run_dir, args.quiet)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cbe_main())
