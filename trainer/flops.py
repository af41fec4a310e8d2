"""``python -m utils.flops -c CONFIG``: parameters and MACs per image, split into trunk / expert branch / heads.

For router configs it also prints the expected cost for a distribution of experts used: ``--experts_used p1,...,pE``
(percent of samples using exactly 1..E experts, as printed by test.py) or ``-r CKPT`` (measured on the test set).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import torch
import torch.nn as nn

from trainer.build import build_without_data, resolve_device
from trainer.cli import apply_overrides
from trainer.cost import ExpertCost, expert_cost, experts_used_percentages, is_multi_expert
from trainer.evaluate import TestData, expand_checkpoints, prepare
from trainer.evaluator import collect_logits
from utils.checkpoint import CheckpointError
from utils.config import load_config, resolve_config
from utils.flops import count_macs, count_parameters
from utils.registry import ConfigError


def parse_percentages(text: str) -> list[float]:
    """'40.99,9.47,49.54' -> [40.99, 9.47, 49.54]."""
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--experts_used expects comma-separated percentages like 40.99,9.47,49.54, "
                          f"got {text!r}") from None


def cost_lines(model: nn.Module, image_shape: tuple[int, ...], percentages: Sequence[float] | None) -> list[str]:
    """The printed report: parameters, total MACs, the per-part split and the expected cost under ``percentages``."""
    router = getattr(model, "router", None)
    lines = [f"parameters: {count_parameters(model):,}"
             + (f" (router: {count_parameters(router):,})" if router is not None else "")]
    if not is_multi_expert(model):
        macs = count_macs(model, image_shape)
        return lines + [f"MACs/image: {macs / 1e9:.4f} G (no trunk/expert split for this model)"]
    cost = expert_cost(model, image_shape)
    e = cost.num_experts
    lines += [f"MACs/image, all {e} expert(s): {cost.all_experts / 1e9:.4f} G ({cost.all_experts / 1e6:.2f} M)",
              f"  shared trunk:            {cost.trunk / 1e6:10.4f} M",
              f"  one expert branch:       {cost.branch / 1e6:10.4f} M   (x {e} = {e * cost.branch / 1e6:.4f} M)",
              f"  heads of all experts:    {cost.heads / 1e6:10.4f} M"]
    if router is not None:
        lines.append(f"  one router decision:     {cost.router / 1e6:10.4f} M   (at most {e - 1} per image)")
    lines.append("  using the first k experts: " + ", ".join(
        f"k={k}: {cost.with_experts(k) / 1e9:.4f} G" for k in range(1, e + 1)))
    if percentages is not None:
        lines.append(expected_line(cost, percentages))
    return lines


def expected_line(cost: ExpertCost, percentages: Sequence[float]) -> str:
    """One line with the distribution of experts used and the resulting expected MACs."""
    dist = " / ".join(f"{p:.2f}" for p in percentages)
    mean = sum(k * p for k, p in enumerate(percentages, start=1)) / 100.0
    return (f"expected MACs/image with {dist} % of samples using 1..{cost.num_experts} experts (mean {mean:.3f}): "
            f"{cost.expected(percentages) / 1e9:.4f} G")


def measured_percentages(checkpoint: str, device: torch.device,
                         overrides: list[tuple[str, Any]]) -> tuple[nn.Module, tuple[int, ...], list[float]]:
    """Load a router checkpoint, run its test set once and return (model, image shape, % of samples using k experts)."""
    run, data = prepare(expand_checkpoints([checkpoint])[0], device, TestData(device), overrides)
    extras: dict[str, torch.Tensor] = {}
    collect_logits(run.model, data.test_loader, run.config["trainer"].get("amp", "off"), extras)
    if "experts_used" not in extras:
        raise ConfigError(f"{checkpoint}: the model has no router (arch.router), so every sample uses all experts")
    return run.model, data.test_set.image_shape, experts_used_percentages(extras["experts_used"], run.model.num_experts)


def flops_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m utils.flops``."""
    p = argparse.ArgumentParser(description="Parameters and MACs per image of a config (per-part split, router cost).")
    p.add_argument("-c", "--config", help="JSON config (not needed with -r)")
    p.add_argument("-r", "--resume", help="router checkpoint: measure the distribution of experts used on its test set")
    p.add_argument("--experts_used", help="percent of samples using exactly 1..E experts, e.g. 40.99,9.47,49.54")
    p.add_argument("--router_threshold", type=float, help="with -r: early-exit threshold (arch.router.args.threshold)")
    p.add_argument("-d", "--device", default="cpu", help="device for -r (default cpu)")
    p.add_argument("--data_dir", help="with -r: override the data directory stored in the checkpoint's config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    args = p.parse_args(argv)
    try:
        if args.resume:
            overrides = [("data_loader.args.data_dir", args.data_dir)] if args.data_dir else []
            if args.router_threshold is not None:
                overrides.append(("arch.router.args.threshold", args.router_threshold))
            model, image_shape, percentages = measured_percentages(args.resume, resolve_device(args.device), overrides)
            print(f"checkpoint: {args.resume}")
        elif args.config:
            config = resolve_config(apply_overrides(load_config(args.config), argparse.Namespace(set=args.set)))
            built = build_without_data(config)
            model, image_shape = built["model"], built["image_shape"]
            percentages = parse_percentages(args.experts_used) if args.experts_used else None
            print(f"config: {args.config}  model: {config['arch']['type']}  input: {tuple(image_shape)}")
        else:
            raise ConfigError("give a config with -c CONFIG or a router checkpoint with -r CHECKPOINT")
        print("\n".join(cost_lines(model, tuple(image_shape), percentages)))
        return 0
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
