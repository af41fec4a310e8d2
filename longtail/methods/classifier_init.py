"""Classifier initialisation from a pretrained backbone (LIFT's semantic-aware initialisation, docs/foundation_models.md)
and the ``init_only`` stage (a model that needs no training, e.g. zero-shot CLIP, written as a checkpoint).

``"head_init": {"type": "text", "templates": "default"}``: every expert's classifier row c is the normalised text
feature of the class name's prompts (CLIP text tower of an ``open_clip`` model; templates "default" = "a photo of a
{}.", "imagenet" = CLIP's 80 ImageNet prompts (their mean), "classname" = "{}", or a list of strings with {}).
``{"type": "class_mean"}``: row c is the normalised mean feature of the class's training images (test transform, any
backbone). Class names come from ``head_init.class_names`` (a file, one name per line), else the data set (CIFAR's
meta file, ``<txt_dir>/<prefix>classnames.txt`` of the list data sets). Not applied when resuming (the checkpoint has the
trained heads).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.core.build import build_model_with_sections
from longtail.core.hooks import BuildContext, Section
from longtail.data_loader.factory import build_data, plain_loader
from longtail.registry import SECTIONS, STAGES
from longtail.trainer.stages import Stage
from longtail.utils.errors import ConfigError

INIT_TYPES = ("text", "class_mean")


def prompt_templates(spec: str | Sequence[str]) -> list[str]:
    """Prompt templates with one ``{}`` for the class name."""
    if isinstance(spec, list):
        if not spec or not all(isinstance(t, str) and "{}" in t for t in spec):
            raise ConfigError("head_init.templates must be a name or a list of strings with {} for the class name")
        return list(spec)
    if spec == "default":
        return ["a photo of a {}."]
    if spec == "classname":
        return ["{}"]
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    raise ConfigError(f"head_init.templates must be default, classname, imagenet or a list, got {spec!r}")


def class_names(spec: dict[str, Any], dataset: Any, num_classes: int) -> list[str]:
    """Class names from ``head_init.class_names`` (a file) or the data set; underscores become spaces."""
    if spec.get("class_names"):
        path = Path(spec["class_names"])
        if not path.is_file():
            raise ConfigError(f"head_init.class_names: file not found: {path}")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = list(getattr(dataset, "class_names", None) or [])
    if len(names) != num_classes:
        raise ConfigError(f"head_init needs {num_classes} class names but found {len(names)}: give a file with one "
                          "name per line as head_init.class_names (data_txt/<data set>/<prefix>classnames.txt ships them)")
    return [name.replace("_", " ") for name in names]


@torch.no_grad()
def text_classifier(model: nn.Module, names: Sequence[str], templates: Sequence[str],
                    device: torch.device) -> torch.Tensor:
    """(C, D) rows: mean over templates of the normalised text features, mapped into the image feature space."""
    tower = getattr(model, "text_tower", None)
    if tower is None:
        raise ConfigError("head_init type 'text' needs a CLIP-style model with a text tower (arch.type open_clip); "
                          "use type 'class_mean' for other backbones")
    joint = torch.stack([tower.embed([t.format(n) for n in names], device) for t in templates]).mean(dim=0)
    return F.normalize(tower.to_feature_space(F.normalize(joint, dim=-1)), dim=-1)


@torch.no_grad()
def class_mean_classifier(model: nn.Module, loader: Any, num_classes: int) -> torch.Tensor:
    """(E, C, D) rows: per expert, the normalised mean feature of each class (classes without images: zero)."""
    model.eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, device=loader.device)
    for images, target in loader.batches(0):
        feat = model.features(images).float()  # (B, E, D)
        if sums is None:
            sums = torch.zeros(feat.shape[1], num_classes, feat.shape[2], device=feat.device)
        sums.index_add_(1, target, feat.transpose(0, 1))
        counts += torch.bincount(target, minlength=num_classes).float()
    if sums is None:
        raise ConfigError("head_init class_mean: the training set is empty")
    return F.normalize(sums / counts.clamp_min(1.0)[None, :, None], dim=-1)


def set_classifier(model: nn.Module, rows: torch.Tensor) -> None:
    """Copy (C, D) or (E, C, D) class rows into every expert's head (a linear head's bias becomes 0)."""
    head = model.head
    rows = rows.expand(model.num_experts, -1, -1) if rows.dim() == 2 else rows
    with torch.no_grad():
        if head.cosine:
            head.weight.copy_(rows.transpose(1, 2).to(head.weight))
        else:
            head.weight.copy_(rows.to(head.weight))
            head.bias.zero_()


@SECTIONS.register("head_init")
class HeadInit(Section):
    """Initialise the classifier heads from text features (CLIP) or class-mean features (any backbone)."""

    keys = {"type": str, "templates": (str, list), "class_names": str, "batch_size": int}
    required = ("type",)

    @classmethod
    def validate(cls, spec: Any, name: str) -> dict[str, Any]:
        spec = super().validate(spec, name)
        if spec["type"] not in INIT_TYPES:
            raise ConfigError(f"'{name}.type' must be one of {', '.join(INIT_TYPES)}, got {spec['type']!r}")
        prompt_templates(spec.get("templates", "default"))
        return spec

    def setup(self, model: nn.Module, ctx: BuildContext) -> None:
        """Compute and copy the rows (not when resuming); the text tower is dropped afterwards."""
        if ctx.resuming:
            return
        data = ctx.data if ctx.data is not None else build_data(ctx.config, ctx.device, train=True)
        model.to(ctx.device)
        if self.spec["type"] == "text":
            names = class_names(self.spec, data.train_set, ctx.num_classes)
            rows = text_classifier(model, names, prompt_templates(self.spec.get("templates", "default")), ctx.device)
        else:
            loader = plain_loader(ctx.config, data.train_set, ctx.device, self.spec.get("batch_size"))
            rows = class_mean_classifier(model, loader, ctx.num_classes)
        set_classifier(model, rows)
        model.__dict__.pop("text_tower", None)


@STAGES.register("init_only")
class InitOnlyStage(Stage):
    """Build the model, run the config's sections (e.g. head_init) and save it: a checkpoint of a model that needs no
    training (zero-shot CLIP), evaluated like any other with test.py / test_all_*.py."""

    def __init__(self, config: dict[str, Any], device: torch.device, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, device, *args, **kwargs)
        self.data = self.data or build_data(config, device, limit_batches=self.limit_batches)
        self.cls_num_list = self.data.train_set.cls_num_list
        self.model, self.sections, _ = build_model_with_sections(config, device, self.data, self.resuming)
        if self.resume_state is not None:
            self.restore(self.resume_state)

    def fit(self) -> dict[str, Any]:
        """Save last.pth once."""
        if self.start_epoch > 1:
            return self.history[-1] if self.history else {}
        metrics = {"epoch": 1}
        self.history.append(metrics)
        self.save("last.pth", 1)
        return metrics
