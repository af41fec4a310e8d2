"""tau-normalisation of a trained linear classifier (Kang et al. 2020; METHODS.md §7.5), as a post-hoc step.

``python -m trainer.tau_norm -r CKPT --tau 0.7 [--out NEW.pth]`` rescales every expert's class weight vectors
w_c -> w_c / ||w_c||_2^tau, sets the biases to 0 and writes a new checkpoint in the same format (atomically) that
test.py / test_all_*.py evaluate directly. Cosine (NormedLinear) heads are rejected: they already divide by
||w_c|| in the forward pass, so rescaling w_c changes nothing.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, strip_prefixes


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_c / ||w_c||_2^tau for class weight vectors along the last dim: (..., C, D) -> same shape."""
    norms = weight.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return weight / norms.pow(tau)


def tau_normalize_state(state_dict: dict[str, torch.Tensor], tau: float, prefix: str = "head.") -> dict[str, torch.Tensor]:
    """A copy of a model state dict with the linear head at ``prefix`` tau-normalised and its bias zeroed."""
    weights = strip_prefixes(state_dict)
    weight_key, bias_key = f"{prefix}weight", f"{prefix}bias"
    if weight_key not in weights:
        raise CheckpointError(f"the checkpoint has no classifier weight {weight_key!r}; pass the classifier's "
                              f"parameter prefix with --prefix (found e.g. {sorted(weights)[-3:]})")
    if bias_key not in weights:
        raise CheckpointError(f"{weight_key!r} belongs to a cosine classifier (no bias; arch.args.use_norm=true): it "
                              "already normalises w_c, so tau-normalisation does not apply. tau-norm needs a linear "
                              "head: train with --set arch.args.use_norm=false")
    out = dict(weights)
    out[weight_key] = tau_normalize(weights[weight_key], tau)
    out[bias_key] = torch.zeros_like(weights[bias_key])
    return out


def tau_normalize_checkpoint(path: str | Path, tau: float, out: str | Path | None = None, prefix: str = "head.") -> Path:
    """Write a tau-normalised copy of checkpoint ``path`` (default: next to it, ``<stem>_taunorm<tau>.pth``)."""
    path = Path(path)
    state = load_checkpoint(path)
    config: dict[str, Any] = copy.deepcopy(state["config"])
    config["name"] = f"{config['name']}_taunorm{tau:g}"
    new_state = {**state, "model": tau_normalize_state(state["model"], tau, prefix), "config": config,
                 "tau_norm": {"tau": float(tau), "source": str(path), "prefix": prefix}}
    target = Path(out) if out else path.with_name(f"{path.stem}_taunorm{tau:g}.pth")
    return save_checkpoint(new_state, target)


def tau_norm_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m trainer.tau_norm``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-r", "--resume", required=True, help="checkpoint with a linear head (arch.args.use_norm=false)")
    p.add_argument("--tau", type=float, required=True, help="normalisation strength (0: unchanged, 1: unit-norm classes)")
    p.add_argument("--out", help="output checkpoint (default: <checkpoint stem>_taunorm<tau>.pth next to it)")
    p.add_argument("--prefix", default="head.", help="parameter prefix of the classifier (default: head.)")
    args = p.parse_args(argv)
    try:
        target = tau_normalize_checkpoint(args.resume, args.tau, args.out, args.prefix)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {target}; evaluate it with: python test.py -r {target}")
    return 0


if __name__ == "__main__":
    sys.exit(tau_norm_main())
