"""Teachers for distillation losses: built from the config's ``distill.checkpoint`` (with the checkpoint's own config).

Any loss that lists ``teacher_output`` in its ``extra_inputs`` gets one: the trainer runs the student through
:class:`TeacherStudent`, which adds the teacher's ensemble output for the same (possibly mixed) batch. The teacher is
always in eval mode and runs without gradients (the reference RIDE code left it in training mode, so its BN layers
used batch statistics and kept updating their running statistics; METHODS.md §3.7, §10.2.6).
"""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn as nn

from trainer.build import build_model, load_stage_checkpoint
from utils.checkpoint import CheckpointError, strip_prefixes
from utils.config import resolve_config
from utils.registry import ConfigError

TEACHER_OUTPUT = "teacher_output"
DISTILL_KEYS = {"checkpoint": str}


def wants_teacher(criterion: nn.Module) -> bool:
    """Whether the loss consumes a teacher's output."""
    return TEACHER_OUTPUT in getattr(criterion, "extra_inputs", ())


def check_distill_spec(config: dict[str, Any], criterion: nn.Module) -> dict[str, Any] | None:
    """The validated ``distill`` block or None; a block without a distilling loss (or vice versa) is an error."""
    spec = config.get("distill")
    loss_name = config["loss"].get("type") if isinstance(config["loss"], dict) else config["loss"]
    if spec is None:
        if wants_teacher(criterion):
            raise ConfigError(f"loss {loss_name!r} distils from a teacher: add \"distill\": {{\"checkpoint\": "
                              "\"saved/<teacher name>/seed<seed>-<time>/last.pth\"}} to the config")
        return None
    if not wants_teacher(criterion):
        raise ConfigError(f"the config has a 'distill' block but loss {loss_name!r} takes no teacher output; "
                          "remove 'distill' or use a distillation loss (e.g. ride_distill)")
    unknown = sorted(set(spec) - set(DISTILL_KEYS))
    if unknown or not isinstance(spec.get("checkpoint"), str):
        raise ConfigError(f"distill must be {{\"checkpoint\": \"path/to/last.pth\"}}; got keys {sorted(spec)}")
    return spec


def build_teacher(checkpoint: str, num_classes: int, in_channels: int, device: torch.device,
                  channels_last: bool = False) -> nn.Module:
    """Rebuild the teacher from its checkpoint's own config, load its weights strictly, freeze it, eval mode."""
    state = load_stage_checkpoint(checkpoint, "distill.checkpoint")
    teacher_config = resolve_config(json.loads(json.dumps(state["config"])))
    teacher = build_model(teacher_config, num_classes, in_channels)
    try:
        teacher.load_state_dict(strip_prefixes(state["model"]))
    except RuntimeError as exc:
        raise CheckpointError(f"distill.checkpoint {checkpoint}: its weights do not fit its own config with "
                              f"{num_classes} classes (teacher trained on another data set?): "
                              f"{str(exc).splitlines()[0]}") from None
    teacher.requires_grad_(False)
    teacher = teacher.to(device)
    if channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher.eval()


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


def with_teacher(config: dict[str, Any], criterion: nn.Module, student: nn.Module, num_classes: int, in_channels: int,
                 device: torch.device) -> nn.Module:
    """The module the training step calls: the student itself, or TeacherStudent when the loss distils."""
    spec = check_distill_spec(config, criterion)
    if spec is None:
        return student
    channels_last = bool(config.get("trainer", {}).get("channels_last", False))
    teacher = build_teacher(spec["checkpoint"], num_classes, in_channels, device, channels_last)
    return TeacherStudent(student, teacher)
