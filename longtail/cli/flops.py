"""Parameters and MACs per image of a config, split into trunk / expert branch / heads.

python -m longtail.cli.flops -c CONFIG [--set KEY=VALUE]
Model extensions add their own lines (a router: the cost of one decision, the cost of early exit after k experts
and, with --experts_used p1,...,pE, the expected cost for that distribution of experts used).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import torch.nn as nn

from longtail.core.cost import expert_cost, is_multi_expert
from longtail.cli.common import add_method_flags, add_set_argument, method_flag_overrides, run_tool, set_overrides
from longtail.core.build import build_without_data, resolve
from longtail.utils.config import apply_overrides, load_config
from longtail.utils.flops import count_macs, count_parameters


def cost_lines(model: nn.Module, image_shape: tuple[int, ...], options: dict[str, Any]) -> list[str]:
    """The printed report: parameters, total MACs, the per-part split and what each model extension adds."""
    extensions = getattr(model, "extensions", lambda: [])()
    lines = [f"parameters: {count_parameters(model):,}" + "".join(
        f" ({name}: {count_parameters(ext):,})" for name, ext in zip(model.extension_names, extensions)
        if count_parameters(ext)) if extensions else f"parameters: {count_parameters(model):,}"]
    if not is_multi_expert(model):
        macs = count_macs(model, image_shape)
        return lines + [f"MACs/image: {macs / 1e9:.4f} G (no trunk/expert split for this model)"]
    cost = expert_cost(model, image_shape)
    e = cost.num_experts
    lines += [f"MACs/image, all {e} expert(s): {cost.all_experts / 1e9:.4f} G ({cost.all_experts / 1e6:.2f} M)",
              f"  shared trunk:            {cost.trunk / 1e6:10.4f} M",
              f"  one expert branch:       {cost.branch / 1e6:10.4f} M   (x {e} = {e * cost.branch / 1e6:.4f} M)",
              f"  heads of all experts:    {cost.heads / 1e6:10.4f} M",
              "  using the first k experts: " + ", ".join(f"k={k}: {cost.with_experts(k) / 1e9:.4f} G"
                                                         for k in range(1, e + 1))]
    for ext in extensions:
        lines += ext.cost_report(model, cost, options)
    return lines


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool (plus the flags method plugins contribute, e.g. --experts_used)."""
    p = argparse.ArgumentParser(description="Parameters and MACs per image of a config (per-part split).")
    p.add_argument("-c", "--config", required=True, help="JSON config")
    add_set_argument(p, "arch.args.num_experts=4")
    add_method_flags(p, "flops")
    return p


def run(args: argparse.Namespace) -> int:
    """Build the config's model without data and print its cost."""
    overrides = method_flag_overrides(args, "flops") + set_overrides(args)
    config = resolve(apply_overrides(load_config(args.config), overrides))
    built = build_without_data(config)
    print(f"config: {args.config}  model: {config['arch']['type']}  input: {tuple(built['image_shape'])}")
    print("\n".join(cost_lines(built["model"], tuple(built["image_shape"]), vars(args))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m longtail.cli.flops``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
