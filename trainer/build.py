"""Build every training object from a resolved config by registered name (shared by train, test and benchmark)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

import data_loader  # noqa: F401  (registers data sets, samplers, augmentations)
from model.registry import LOSSES, MODELS, WEIGHT_FORMATS  # importing the package registers every entry
from model.router import attach_router
from trainer.combiner import COMBINERS, Combiner
from trainer.optim import OPTIMIZERS, SCHEDULERS
from utils.checkpoint import CheckpointError, load_checkpoint, strip_prefixes
from utils.registry import ConfigError


def resolve_device(device: str | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1' or a GPU list '0,1' (sets CUDA_VISIBLE_DEVICES); default: GPU when available."""
    if device and all(part.strip().isdigit() for part in device.split(",")):
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        device = "cuda"
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but no CUDA GPU is visible; use -d cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"-d/--device {device!r} is not a device: use cpu, cuda, cuda:N or a GPU list like 0,1") from None


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are complete (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(config: dict[str, Any], num_classes: int, in_channels: int,
                cls_num_list: Sequence[int] | None = None) -> nn.Module:
    """The configured architecture plus the optional ``arch.router``; class count, input channels and training
    counts come from the data set (architectures that do not take ``cls_num_list`` never see it)."""
    counts = {} if cls_num_list is None else {"cls_num_list": list(cls_num_list)}
    model = MODELS.build(config["arch"], "arch", siblings=("router",), num_classes=num_classes, in_channels=in_channels,
                         **counts)
    if "router" in config["arch"]:
        attach_router(model, config["arch"]["router"])
    return model


def num_experts_of(model: nn.Module) -> int:
    """Number of experts of a (possibly wrapped) model."""
    return int(getattr(getattr(model, "module", model), "num_experts", 1))


def build_criterion(config: dict[str, Any], cls_num_list: Sequence[int], num_experts: int) -> nn.Module:
    """The configured loss; class counts come from the training set, the expert count from the model."""
    return LOSSES.build(config["loss"], "loss", siblings=("tau_min", "tau_max"), cls_num_list=list(cls_num_list),
                        num_experts=num_experts)


def parameter_groups(model: nn.Module, group_lr: dict[str, float]) -> list[dict[str, Any]]:
    """Trainable parameters split by name prefix into groups with their own learning rate (rest: optimizer.args.lr).

    ``optimizer.group_lr`` = ``{"trunk.": 0.001, "branch.": 0.001}`` gives the backbone a smaller rate than the heads
    (SADE's Places-LT fine-tuning); the first matching prefix wins.
    """
    groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in group_lr}
    rest = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            prefix = next((p for p in group_lr if name.startswith(p)), None)
            (groups[prefix] if prefix is not None else rest).append(param)
    unused = [p for p, params in groups.items() if not params]
    if unused:
        raise ConfigError(f"optimizer.group_lr prefix(es) {unused} match no trainable parameter; names start with "
                          f"{sorted({n.split('.')[0] + '.' for n, _ in model.named_parameters()})}")
    return [{"params": rest}] + [{"params": params, "lr": float(group_lr[p])} for p, params in groups.items()]


def build_optimizer(config: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over all trainable parameters (per-prefix learning rates from ``optimizer.group_lr``)."""
    group_lr = config["optimizer"].get("group_lr", {})
    if not isinstance(group_lr, dict) or not all(isinstance(v, (int, float)) for v in group_lr.values()):
        raise ConfigError(f"optimizer.group_lr must map parameter-name prefixes to learning rates, got {group_lr!r}")
    return OPTIMIZERS.build(config["optimizer"], "optimizer", siblings=("group_lr",),
                            params=parameter_groups(model, group_lr))


def build_scheduler(config: dict[str, Any], optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured per-epoch LR schedule (constant when the config has none)."""
    return SCHEDULERS.build(config.get("lr_scheduler", "constant"), "lr_scheduler", optimizer=optimizer)


def build_combiner(config: dict[str, Any], epoch: int | None = None) -> Combiner:
    """The configured combiner; from ``finetuning_combiner.initial_epoch`` on, plain training without mixing."""
    finetune = config.get("finetuning_combiner")
    if finetune is not None and epoch is not None and epoch >= int(finetune.get("initial_epoch", 10**9)):
        return COMBINERS.build("default", "finetuning_combiner")
    return COMBINERS.build(config.get("combiner", "default"), "combiner")


def load_stage_checkpoint(path: str, key: str) -> dict[str, Any]:
    """Load the checkpoint an earlier stage wrote (a run directory means its last.pth); a missing file names the key."""
    try:
        return load_checkpoint(Path(path) / "last.pth" if Path(path).is_dir() else path)
    except CheckpointError as exc:
        raise CheckpointError(f"{key}: {exc}. Train the earlier stage first and point to its checkpoint, "
                              f"e.g. --set {key}=saved/<name>/seed<seed>-<time>/last.pth") from None


@WEIGHT_FORMATS.register("framework")
def framework_weights(path: str, model: nn.Module) -> dict[str, Any]:
    """Weights of a checkpoint written by this framework's trainer (a run directory means its last.pth)."""
    return strip_prefixes(load_stage_checkpoint(path, "init_from.checkpoint")["model"])


INIT_FROM_KEYS = {"checkpoint": str, "exclude": list, "freeze": list, "strict": bool, "format": str}


def init_from_checkpoint(model: nn.Module, spec: dict[str, Any], load: bool = True) -> list[str]:
    """Load weights of an earlier stage (minus ``exclude`` prefixes) and freeze ``freeze`` prefixes.

    Used by two-stage methods (cRT, RIDE's router, Class-Balanced Experts): ``{"checkpoint": path, "exclude":
    ["head."], "freeze": ["trunk.", "branch."]}``. ``format`` (default ``framework``) names how the file maps onto
    the model, e.g. ``torchvision_resnet`` for an ImageNet-pretrained torchvision ResNet (Places-LT). With
    ``load=False`` (resuming: the weights come from the run's own checkpoint) only the freezing is applied, so the
    earlier stage's file need not exist any more. Returns the names of the frozen parameters.
    """
    unknown = set(spec) - set(INIT_FROM_KEYS)
    if unknown or "checkpoint" not in spec:
        raise ConfigError(f"init_from needs 'checkpoint' and accepts {', '.join(INIT_FROM_KEYS)}; got {sorted(spec)}")
    if load:
        load_initial_weights(model, spec)
    frozen = []
    for name, param in model.named_parameters():
        if name.startswith(tuple(spec.get("freeze", []))):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def load_initial_weights(model: nn.Module, spec: dict[str, Any]) -> None:
    """Copy the ``init_from`` checkpoint's weights (minus ``exclude`` prefixes) into ``model``."""
    exclude = tuple(spec.get("exclude", []))
    reader = WEIGHT_FORMATS.get(spec.get("format", "framework"), where="init_from.format")
    weights = {k: v for k, v in reader(spec["checkpoint"], model).items() if not k.startswith(exclude)}
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ConfigError(f"init_from.checkpoint {spec['checkpoint']}: shapes differ for {', '.join(mismatched[:5])} "
                          "(different arch.args? add the prefixes to init_from.exclude to re-initialise them)")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(exclude)]
    if spec.get("strict", False) and (missing or unexpected):
        raise ConfigError(f"init_from.checkpoint {spec['checkpoint']}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def frozen_batchnorm_to_eval(model: nn.Module) -> None:
    """Put BN layers whose affine parameters are all frozen in eval mode (their running statistics stay fixed)."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if "BatchNorm" in type(module).__name__ and params and not any(p.requires_grad for p in params):
            module.eval()


def build_without_data(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a resolved config and build every object from the data set's registered shape (no files needed)."""
    from data_loader.datasets import DATASETS, dataset_info
    from data_loader.factory import build_augment, split_loader_args

    dataset_args, loader_args = split_loader_args(config["data_loader"])
    name = config["data_loader"].get("type")
    DATASETS.get(name, where="data_loader.type")
    DATASETS.validate_args(name, dataset_args, "data_loader.args", code_supplied={"split"})
    info = dataset_info(name, dataset_args)
    counts = info["cls_num_list"]
    model = build_model(config, info["num_classes"], info["image_shape"][0], counts)
    criterion = build_criterion(config, counts, num_experts_of(model))
    optimizer = build_optimizer(config, model)
    augment = build_augment(info.get("loader", "tensor"), loader_args, info["image_shape"][-1])
    return {"model": model, "criterion": criterion, "optimizer": optimizer, "scheduler": build_scheduler(config, optimizer),
            "combiner": build_combiner(config), "augment": augment, "image_shape": info["image_shape"], "cls_num_list": counts}
