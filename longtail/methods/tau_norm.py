"""tau-normalisation of a trained linear classifier (Kang et al., ICLR 2020) as a stage (docs/methods.md, decoupling).

The ``tau_norm`` stage rescales every expert's class weight vectors w_c -> w_c / ||w_c||_2^tau and sets the biases to
0, on the weights of ``init_from.checkpoint``, and writes a normal checkpoint that test.py / test_all_*.py evaluate.
Config: the stage-1 config plus ``"stage": {"type": "tau_norm", "args": {"tau": 0.7}}`` and ``"init_from":
{"checkpoint": ..., "strict": true}`` (``python -m longtail.cli.tau_norm -r CKPT --tau 0.7`` writes it for you). Cosine
(NormedLinear) heads are rejected: they already divide by ||w_c|| in the forward pass, so rescaling w_c changes
nothing.
"""
from __future__ import annotations

from typing import Any

import torch

from longtail.core.build import build_model, input_channels, load_stage_checkpoint
from longtail.core.hooks import BuildContext, build_sections
from longtail.registry import STAGES
from longtail.trainer.stages import Stage
from longtail.utils.checkpoint import strip_prefixes
from longtail.utils.errors import ConfigError


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_c / ||w_c||_2^tau for class weight vectors along the last dim: (..., C, D) -> same shape."""
    norms = weight.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
    return weight / norms.pow(tau)


def tau_normalize_state(state_dict: dict[str, torch.Tensor], tau: float, prefix: str = "head.") -> dict[str, torch.Tensor]:
    """A copy of a model state dict with the linear head at ``prefix`` tau-normalised and its bias zeroed."""
    weights = strip_prefixes(state_dict)
    weight_key, bias_key = f"{prefix}weight", f"{prefix}bias"
    if weight_key not in weights:
        raise ConfigError(f"the checkpoint has no classifier weight {weight_key!r}; pass the classifier's "
                          f"parameter prefix with --prefix (found e.g. {sorted(weights)[-3:]})")
    if bias_key not in weights:
        raise ConfigError(f"{weight_key!r} belongs to a cosine classifier (no bias; arch.args.use_norm=true): it "
                          "already normalises w_c, so tau-normalisation does not apply. tau-norm needs a linear "
                          "head: train with --set arch.args.use_norm=false")
    out = dict(weights)
    out[weight_key] = tau_normalize(weights[weight_key], tau)
    out[bias_key] = torch.zeros_like(weights[bias_key])
    return out


@STAGES.register("tau_norm")
class TauNormStage(Stage):
    """Post-hoc stage: load the stage-1 weights (``init_from``), tau-normalise the head, save (one "epoch")."""

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """The stage needs init_from (the weights to transform) and a tau."""
        args = cls.stage_args(config)
        if "init_from" not in config:
            raise ConfigError("the tau_norm stage transforms an earlier stage's weights: add "
                              '"init_from": {"checkpoint": "saved/<name>/<run>/last.pth"}')
        if not isinstance(args.get("tau"), (int, float)) or isinstance(args.get("tau"), bool):
            raise ConfigError(f"stage.args.tau must be a number (0: unchanged, 1: unit-norm classes), got {args.get('tau')!r}")
        unknown = sorted(set(args) - {"tau", "prefix"})
        if unknown:
            raise ConfigError(f"unknown key(s) stage.args.{', '.join(unknown)}; valid: tau, prefix")

    @classmethod
    def check_inputs(cls, config: dict[str, Any]) -> None:
        """The stage-1 checkpoint exists and has a linear head (before any run directory is created)."""
        source = load_stage_checkpoint(config["init_from"]["checkpoint"], "init_from.checkpoint")
        tau_normalize_state(source["model"], 0.0, cls.stage_args(config).get("prefix", "head."))

    @staticmethod
    def stage_args(config: dict[str, Any]) -> dict[str, Any]:
        """``stage.args`` of the config."""
        block = config.get("stage", {})
        return dict(block.get("args") or {}) if isinstance(block, dict) else {}

    def __init__(self, config: dict[str, Any], device: torch.device, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, device, *args, **kwargs)
        self.validate_config(config)
        source = load_stage_checkpoint(config["init_from"]["checkpoint"], "init_from.checkpoint")
        self.cls_num_list = list(source["cls_num_list"])
        classes, channels = len(self.cls_num_list), input_channels(config)
        self.model = build_model(config, classes, channels, self.cls_num_list)
        ctx = BuildContext(config, device, classes, channels, self.cls_num_list, self.resuming)
        for section in build_sections(config):
            section.setup(self.model, ctx)
        if self.resume_state is not None:
            self.restore(self.resume_state)

    def total_epochs(self) -> int:
        """One transform, whatever trainer.epochs the stage-1 config had."""
        return 1

    def fit(self) -> dict[str, Any]:
        """Transform the head once and save last.pth (a resumed, finished stage does nothing)."""
        if self.start_epoch > 1:
            return self.history[-1] if self.history else {}
        args = self.stage_args(self.config)
        tau, prefix = float(args["tau"]), args.get("prefix", "head.")
        self.model.load_state_dict(tau_normalize_state(self.model.state_dict(), tau, prefix))
        metrics = {"epoch": 1, "tau": tau}
        self.history.append(metrics)
        self.logger.info(f"tau-normalised {prefix}weight with tau {tau:g} (biases zeroed)")
        self.save("last.pth", 1)
        return metrics
