"""Build every training object from a resolved config by registered name (shared by train, test and benchmark)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

import data_loader  # noqa: F401  (registers data sets, samplers, augmentations)
import model  # noqa: F401  (registers architectures and losses)
from model.registry import LOSSES, MODELS
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


def build_optimizer(config: dict[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS.build(config["optimizer"], "optimizer", params=params)


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


INIT_FROM_KEYS = {"checkpoint": str, "exclude": list, "freeze": list, "strict": bool}


def init_from_checkpoint(model: nn.Module, spec: dict[str, Any]) -> list[str]:
    """Load weights of an earlier stage (minus ``exclude`` prefixes) and freeze ``freeze`` prefixes.

    Used by two-stage methods (cRT, RIDE's router, Class-Balanced Experts): ``{"checkpoint": path, "exclude":
    ["head."], "freeze": ["trunk.", "branch."]}``. Returns the names of the frozen parameters.
    """
    unknown = set(spec) - set(INIT_FROM_KEYS)
    if unknown or "checkpoint" not in spec:
        raise ConfigError(f"init_from needs 'checkpoint' and accepts {', '.join(INIT_FROM_KEYS)}; got {sorted(spec)}")
    exclude = tuple(spec.get("exclude", []))
    state = load_stage_checkpoint(spec["checkpoint"], "init_from.checkpoint")
    weights = {k: v for k, v in strip_prefixes(state["model"]).items() if not k.startswith(exclude)}
    own = model.state_dict()
    mismatched = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise ConfigError(f"init_from.checkpoint {spec['checkpoint']}: shapes differ for {', '.join(mismatched[:5])} "
                          "(different arch.args? add the prefixes to init_from.exclude to re-initialise them)")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(exclude)]
    if spec.get("strict", False) and (missing or unexpected):
        raise ConfigError(f"init_from.checkpoint {spec['checkpoint']}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    frozen = []
    for name, param in model.named_parameters():
        if name.startswith(tuple(spec.get("freeze", []))):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def frozen_batchnorm_to_eval(model: nn.Module) -> None:
    """Put BN layers whose affine parameters are all frozen in eval mode (their running statistics stay fixed)."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if "BatchNorm" in type(module).__name__ and params and not any(p.requires_grad for p in params):
            module.eval()


def build_without_data(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a resolved config and build every object from the data set's registered shape (no files needed)."""
    from data_loader.augment import AUGMENTS
    from data_loader.datasets import DATASETS, dataset_info
    from data_loader.factory import split_loader_args

    dataset_args, loader_args = split_loader_args(config["data_loader"])
    name = config["data_loader"].get("type")
    DATASETS.get(name, where="data_loader.type")
    DATASETS.validate_args(name, dataset_args, "data_loader.args", code_supplied={"split"})
    info = dataset_info(name, dataset_args)
    counts = info["cls_num_list"]
    model = build_model(config, info["num_classes"], info["image_shape"][0], counts)
    criterion = build_criterion(config, counts, num_experts_of(model))
    optimizer = build_optimizer(config, model)
    return {"model": model, "criterion": criterion, "optimizer": optimizer, "scheduler": build_scheduler(config, optimizer),
            "combiner": build_combiner(config), "augment": AUGMENTS.build(loader_args.get("augment", "standard"), "data_loader.args.augment"),
            "image_shape": info["image_shape"], "cls_num_list": counts}
