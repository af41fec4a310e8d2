"""RIDE (Wang et al., ICLR 2021) as a plugin: the expert-assignment router, teacher distillation and the router's
compute report (docs/methods.md, RIDE). Its losses (``ride``, ``ride_distill``, ``ride_router``) are in
model/losses/ride.py.

Router: a config adds it with a sibling block of the architecture, on any multi-expert backbone:
``"arch": {"type": "resnet32", "args": {...}, "router": {"type": "ride", "args": {"top_k": 30, "threshold": 0.5}}}``.
Its parameters live under ``router.`` so a stage-1 checkpoint loads unchanged (init_from) and everything else can be
frozen with ``init_from.freeze = ["trunk.", "branch.", "head."]``.

* Training mode: the model runs all experts as usual and adds ``router_logits`` (B, E-1), decision k taken after
  experts 0..k (trained by the ``ride_router`` loss).
* Eval mode: early exit. Expert 0 runs for every sample; expert k runs only for samples whose decision k-1 has
  sigmoid(u) > ``threshold``. The output adds ``experts_used`` (B,) in 1..E. ``logits`` (B, E, C) holds the evaluated
  experts' logits and, in the slots of experts a sample skipped, the mean of the experts it used, so that
  ``logits.mean(1)`` (what every evaluator averages) equals the early-exit prediction ``output``.

Distillation: the top-level ``"distill": {"checkpoint": path}`` section builds the teacher from that checkpoint's
own config and adds its ensemble output ``teacher_output`` to every training step. The teacher is always in eval
mode and runs without gradients (the reference left it in training mode, so its BN layers used batch statistics
and kept updating their running statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.core.cost import ExpertCost, expert_cost
from longtail.registry import REPORTERS
from longtail.model.experts import ModelExtension
from longtail.registry import MODEL_EXTENSIONS
from longtail.core.build import load_stage_checkpoint, model_from_checkpoint
from longtail.core.hooks import BuildContext, Section
from longtail.registry import register_cli_flag
from longtail.registry import SECTIONS
from longtail.utils.errors import ConfigError
from longtail.utils.flops import count_call_macs

ROUTER_TYPES = ("ride",)  # the router variants arch.router.type accepts
TEACHER_OUTPUT = "teacher_output"


# ----------------------------------------------------------------------------------------------- router
class ExpertRouter(ModelExtension):
    """Per decision k < E-1: u_k = g([top-K of the prefix-mean logits, ReLU(h_k(normalize(feature of expert k)))]).

    ``h_k``: feature_dim -> hidden_dim, one per decision; ``g``: (hidden_dim + top_k) -> 1, shared by all decisions.
    """

    provides = ("router_logits",)
    per_sample_outputs = ("experts_used",)

    def __init__(self, num_experts: int, feature_dim: int, num_classes: int, top_k: int = 30, hidden_dim: int = 16,
                 threshold: float = 0.5) -> None:
        super().__init__()
        if num_experts < 2:
            raise ConfigError(f"arch.router needs at least 2 experts (arch.args.num_experts is {num_experts})")
        if not 1 <= top_k <= num_classes:
            raise ConfigError(f"arch.router.args.top_k must be in 1..{num_classes} (the class count), got {top_k}")
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"arch.router.args.threshold is a probability in [0, 1], got {threshold}")
        self.num_experts, self.top_k, self.threshold = num_experts, top_k, threshold
        self.hidden = nn.ModuleList(nn.Linear(feature_dim, hidden_dim) for _ in range(num_experts - 1))
        self.output = nn.Linear(hidden_dim + top_k, 1)

    def decision(self, k: int, features: torch.Tensor, mean_logits: torch.Tensor) -> torch.Tensor:
        """Router logit (B,) "expert k+1 will help" from expert k's pooled features and the mean logits of 0..k."""
        hidden = F.relu(self.hidden[k](F.normalize(features, dim=-1)))
        confidence = mean_logits.topk(self.top_k, dim=-1).values
        return self.output(torch.cat([confidence.to(hidden.dtype), hidden], dim=-1)).squeeze(-1)

    def forward(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Training-time router logits (B, E-1) from all experts' logits (B, E, C) and pooled features (B, E, D)."""
        counts = torch.arange(1, logits.shape[1] + 1, device=logits.device, dtype=logits.dtype)
        prefix_mean = logits.cumsum(dim=1) / counts[None, :, None]
        decisions = [self.decision(k, features[:, k], prefix_mean[:, k]) for k in range(self.num_experts - 1)]
        return torch.stack(decisions, dim=1)

    def early_exit(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inference with per-sample early exit through ``model``'s trunk, branch and head."""
        shared = model.trunk(x)
        features = model.expert_features(shared, 0)
        first = model.head.forward_expert(features, 0)
        batch, num_classes = first.shape
        logits = first.new_zeros(batch, self.num_experts, num_classes)
        logits[:, 0] = first
        total = first.clone()
        used = torch.ones(batch, dtype=torch.long, device=x.device)
        active = torch.arange(batch, device=x.device)
        for k in range(1, self.num_experts):
            u = self.decision(k - 1, features, total[active] / used[active, None])
            active = active[torch.sigmoid(u.float()) > self.threshold]
            if active.numel() == 0:
                break
            features = model.expert_features(shared[active], k)
            z = model.head.forward_expert(features, k)
            logits[active, k] = z
            total[active] = total[active] + z
            used[active] += 1
        mean = total / used[:, None]
        skipped = torch.arange(self.num_experts, device=x.device)[None, :] >= used[:, None]
        logits = torch.where(skipped[..., None], mean[:, None, :].to(logits.dtype), logits)
        return {"output": mean, "logits": logits, "experts_used": used}

    def inference(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval mode: early exit."""
        return self.early_exit(model, x)

    def extend(self, model: nn.Module, x: torch.Tensor, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training mode: add the router logits of every decision."""
        if model.training:
            out["router_logits"] = self(out["logits"], out["feat"])
        return out

    def decision_macs(self, model: nn.Module) -> int:
        """MACs of one router decision for one image."""
        device = next(model.parameters()).device
        feat = torch.ones(1, model.feature_dim, device=device)
        logits = torch.ones(1, model.num_classes, device=device)
        return count_call_macs(lambda: self.decision(0, feat, logits))

    def cost_report(self, model: nn.Module, cost: ExpertCost, options: dict[str, Any]) -> list[str]:
        """The decision cost, and the expected cost for --experts_used percentages (longtail/cli/flops.py)."""
        routed = RouterCost(cost, self.decision_macs(model))
        e = cost.num_experts
        lines = [f"  one router decision:     {routed.decision / 1e6:10.4f} M   (at most {e - 1} per image)",
                 "  with early exit after k experts: " + ", ".join(
                     f"k={k}: {routed.with_experts(k) / 1e9:.4f} G" for k in range(1, e + 1))]
        if options.get("experts_used"):
            lines.append(expected_line(routed, parse_percentages(options["experts_used"])))
        return lines


@MODEL_EXTENSIONS.register("router")
def attach_router(model: nn.Module, block: Any) -> ExpertRouter:
    """The router described by ``arch.router`` = ``{"type": "ride", "args": {top_k, hidden_dim, threshold}}``."""
    if not isinstance(block, dict) or block.get("type") not in ROUTER_TYPES or set(block) - {"type", "args"}:
        raise ConfigError(f"arch.router must be {{\"type\": \"ride\", \"args\": {{...}}}}, got {block!r} (a "
                          "--router_threshold flag needs a checkpoint whose model has a router)")
    args = dict(block.get("args") or {})
    unknown = sorted(set(args) - {"top_k", "hidden_dim", "threshold"})
    if unknown:
        raise ConfigError(f"unknown key(s) arch.router.args.{', '.join(unknown)}; valid: top_k, hidden_dim, threshold")
    return ExpertRouter(model.num_experts, model.feature_dim, model.num_classes, **args)


@dataclass
class RouterCost:
    """Per-image MACs of a routed model: early exit after k experts evaluates min(k, E-1) decisions."""

    experts: ExpertCost
    decision: int

    def with_experts(self, k: int) -> float:
        """MACs of a sample that uses the first ``k`` experts and the decisions it evaluated."""
        return self.experts.with_experts(k) + min(k, self.experts.num_experts - 1) * self.decision

    def expected(self, percentages: Sequence[float]) -> float:
        """Expected MACs per image when p_k percent of the samples use exactly k experts (k = 1..E)."""
        e = self.experts.num_experts
        if len(percentages) != e:
            raise ConfigError(f"give one percentage per expert count 1..{e}, got {len(percentages)} values")
        if any(p < 0 for p in percentages) or not math.isclose(sum(percentages), 100.0, abs_tol=0.5):
            raise ConfigError("the percentages of samples using 1..E experts must be >= 0 and sum to 100, "
                              f"got {list(percentages)}")
        return sum(p / 100.0 * self.with_experts(k) for k, p in enumerate(percentages, start=1))


def parse_percentages(text: str) -> list[float]:
    """'40.99,9.47,49.54' -> [40.99, 9.47, 49.54]."""
    try:
        return [float(v) for v in str(text).replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--experts_used expects comma-separated percentages like 40.99,9.47,49.54, "
                          f"got {text!r}") from None


def expected_line(cost: RouterCost, percentages: Sequence[float]) -> str:
    """One line with the distribution of experts used and the resulting expected MACs."""
    dist = " / ".join(f"{p:.2f}" for p in percentages)
    mean = sum(k * p for k, p in enumerate(percentages, start=1)) / 100.0
    return (f"expected MACs/image with {dist} % of samples using 1..{cost.experts.num_experts} experts (mean "
            f"{mean:.3f}): {cost.expected(percentages) / 1e9:.4f} G")


def experts_used_percentages(experts_used: torch.Tensor, num_experts: int) -> list[float]:
    """Percentage of samples that used exactly k = 1..E experts."""
    counts = torch.bincount(experts_used.long().flatten(), minlength=num_experts + 1)[1:num_experts + 1].double()
    return (100.0 * counts / max(experts_used.numel(), 1)).tolist()


def routing_report(experts_used: torch.Tensor, targets: torch.Tensor, masks: dict[str, torch.Tensor],
                   cost: RouterCost) -> dict[str, float]:
    """Mean experts used (overall and per shot group of the true class), % of samples per count, expected MACs (M)."""
    used = experts_used.double()
    report = {"experts_mean": float(used.mean())}
    for group, mask in masks.items():
        in_group = mask.to(targets.device)[targets]
        report[f"experts_mean_{group}"] = float(used[in_group].mean()) if in_group.any() else float("nan")
    percentages = experts_used_percentages(experts_used, cost.experts.num_experts)
    report.update({f"pct_{k}_experts": p for k, p in enumerate(percentages, start=1)})
    report["mmacs"] = cost.expected(percentages) / 1e6  # millions: readable for CIFAR (~100) and small models alike
    report["mmacs_all_experts"] = cost.with_experts(cost.experts.num_experts) / 1e6
    return report


@REPORTERS.register("routing")
def routing_columns(run: Any, extras: dict[str, torch.Tensor], targets: torch.Tensor, masks: dict[str, torch.Tensor],
                    image_shape: tuple[int, ...]) -> dict[str, float]:
    """Router models: experts used per sample and the resulting expected compute (uniform test report)."""
    router = getattr(run.model, "router", None)
    if "experts_used" not in extras or not isinstance(router, ExpertRouter):
        return {}
    cost = RouterCost(expert_cost(run.model, image_shape), router.decision_macs(run.model))
    return routing_report(extras["experts_used"], targets, masks, cost)


routing_columns.caption = ("router: experts used (mean, per true-class group), % of samples using k experts, expected "  # type: ignore[attr-defined]
                           "MACs per image in millions (mmacs; / 1000 = the reference's GFLOPs) and with all experts "
                           "(per-expert columns: skipped experts hold the mean of the used ones)")

register_cli_flag(["--router_threshold"], ("test", "test_all", "flops"),
                  lambda args, value: [("arch.router.args.threshold", value)], type=float,
                  help="router models: early-exit threshold on sigmoid(router logit) (arch.router.args.threshold); "
                       "higher -> fewer experts per sample")
register_cli_flag(["--experts_used"], ("flops",), lambda args, value: [],
                  help="router configs: percent of samples using exactly 1..E experts, e.g. 40.99,9.47,49.54 "
                       "(as printed by test.py) -> expected MACs per image")


# ----------------------------------------------------------------------------------------------- distillation
class TeacherStudent(nn.Module):
    """The student plus a frozen teacher: forward returns the student's outputs and ``teacher_output`` (B, C).

    Only the student is trained and checkpointed (the trainer keeps a reference to the bare student); ``train()``
    never takes the teacher out of eval mode.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student, self.teacher = student, teacher

    def train(self, mode: bool = True) -> "TeacherStudent":
        """Set the student's mode; the teacher stays in eval mode (fixed BN statistics)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Student outputs plus the teacher's ensemble output on the same input."""
        out = dict(self.student(x))
        with torch.no_grad():
            out[TEACHER_OUTPUT] = self.teacher(x)["output"].float()
        return out


@SECTIONS.register("distill")
class Distill(Section):
    """``"distill": {"checkpoint": "saved/<teacher>/<run>/last.pth"}``: a frozen teacher next to the student."""

    keys = {"checkpoint": str}
    required = ("checkpoint",)
    provides = (TEACHER_OUTPUT,)

    def checkpoints(self) -> dict[str, str]:
        """The teacher's checkpoint."""
        return {"distill.checkpoint": self.spec["checkpoint"]}

    def step_model(self, model: nn.Module, ctx: BuildContext) -> nn.Module:
        """Rebuild the teacher from its checkpoint's own config, freeze it and run it beside the student."""
        path = self.spec["checkpoint"]
        state = load_stage_checkpoint(path, "distill.checkpoint")
        teacher, _ = model_from_checkpoint(state, f"distill.checkpoint {path}")
        classes = len(state["cls_num_list"])
        if classes != ctx.num_classes:
            raise ConfigError(f"distill.checkpoint {path} was trained on {classes} classes but this run has "
                              f"{ctx.num_classes} (teacher trained on another data set?)")
        teacher.requires_grad_(False)
        teacher = teacher.to(ctx.device)
        if ctx.config["trainer"].get("channels_last", False):
            teacher = teacher.to(memory_format=torch.channels_last)
        return TeacherStudent(model, teacher.eval())
