"""Build every object of a run from a resolved config by registered name (shared by training, evaluation and tools).

Nothing here names a method: model extensions (``arch.<key>``), config sections and stages are looked up in their
registries (trainer/hooks.py), and their plugins register themselves.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn

from longtail.registry import LOSSES, MODEL_EXTENSIONS, MODELS
from longtail.core.combiner import Combiner
from longtail.registry import COMBINERS
from longtail.core.hooks import BuildContext, Section, build_sections, check_test_time_blocks, section_validators
from longtail.data_loader.factory import check_input_block
from longtail.data_loader.multiview import num_views
from longtail.registry import SECTIONS, STAGES
from longtail.registry import OPTIMIZERS, SCHEDULERS, TEST_VIEWS
from longtail.utils.checkpoint import load_checkpoint, strip_prefixes
from longtail.utils.config import check_finite, resolve_config
from longtail.utils.errors import CheckpointError, ConfigError
from longtail.utils.registry import Registry

ARCH_BLOCK_KEYS = ("type", "args")  # any other key of the arch block names a model extension


# top-level block -> (registry of its "type", keys the engine itself reads from the block)
TYPED_BLOCKS = {"loss": (LOSSES, ()), "optimizer": (OPTIMIZERS, ("group_lr",)), "lr_scheduler": (SCHEDULERS, ()),
                "combiner": (COMBINERS, ()), "stage": (STAGES, ())}


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """Resolve a raw config after importing its ``imports`` plugins: defaults, registered sections, and every typed
    block checked and resolved by its own registered entry (derived values such as a loss's per-expert taus)."""
    for module in config.get("imports", []) if isinstance(config, dict) else []:
        if not isinstance(module, str):
            raise ConfigError(f"'imports' must list module names (e.g. [\"my_methods.lws2\"]), got {module!r}")
        Registry.add_plugin_package(module)
    Registry.load_plugins()
    config = resolve_config(config, sections=section_validators())
    for key, (registry, engine_keys) in TYPED_BLOCKS.items():
        if key in config:
            config[key] = registry.resolve_block(config[key], key, config, engine_keys)
    arch = config["arch"]
    extensions = [k for k in arch if k not in ARCH_BLOCK_KEYS] if isinstance(arch, dict) else []
    for key in extensions:
        MODEL_EXTENSIONS.get(key, where=f"arch.{key}")
    config["arch"] = MODELS.resolve_block(arch, "arch", config, extensions)
    apply_model_input(config)
    if "finetuning_combiner" in config:
        config["finetuning_combiner"] = resolve_finetuning_combiner(config["finetuning_combiner"], config)
    check_test_time_blocks(config["evaluation"])
    TEST_VIEWS.resolve_block(config["evaluation"]["views"], "evaluation.views", config)
    check_finite(config)  # derived values too (a tau list given as text)
    return config


def apply_model_input(config: dict[str, Any]) -> None:
    """Preprocessing that the model prescribes (a MODELS entry's ``input_config(args, config)``: size, resize,
    interpolation, mean, std of a pretrained backbone) goes into ``data_loader.args.input``; keys the config sets
    there itself win. The data pipeline reads only that block (data and model meet here, in core)."""
    prescribe = getattr(MODELS.get(config["arch"]["type"]), "input_config", None)
    if prescribe is None:
        return
    args = config["data_loader"].setdefault("args", {})
    given = args.get("input") or {}
    if not isinstance(given, dict):
        raise ConfigError(f"data_loader.args.input must be an object (size, resize, interpolation, mean, std), got {given!r}")
    block = {**prescribe(config["arch"]["args"], config), **given}
    channels = dataset_channels(config)
    if "channels" not in block and channels == 1 and len(block.get("mean", ())) == 3:
        # grey images into a model built with one input channel (timm adapts its first layer): one mean / std
        block["mean"], block["std"] = [sum(block["mean"]) / 3], [sum(block["std"]) / 3]
    args["input"] = block
    check_input_block(block)


def dataset_channels(config: dict[str, Any]) -> int:
    """Image channels of the configured data set as stored (known without reading files)."""
    from longtail.data_loader.datasets import dataset_info
    from longtail.data_loader.factory import split_loader_args

    dataset_args, _ = split_loader_args(config["data_loader"])
    return int(dataset_info(config["data_loader"]["type"], dataset_args)["image_shape"][0])


def resolve_finetuning_combiner(block: Any, config: dict[str, Any]) -> dict[str, Any]:
    """``{"initial_epoch": E, "type": "default", "args": {}}``: from epoch E on, train with this combiner (default:
    plain batches, no mixing) instead of ``combiner``."""
    if not isinstance(block, dict) or not isinstance(block.get("initial_epoch"), int) \
            or isinstance(block.get("initial_epoch"), bool) or block["initial_epoch"] < 1:
        raise ConfigError("finetuning_combiner must be {\"initial_epoch\": E (an integer >= 1), \"type\": <combiner, "
                          f"default 'default'>, \"args\": {{...}}}}, got {block!r}")
    combiner = COMBINERS.resolve_block({"type": block.get("type", "default"), "args": block.get("args", {})},
                                       "finetuning_combiner", config)
    extra = sorted(set(block) - {"initial_epoch", "type", "args"})
    if extra:
        raise ConfigError(f"unknown key(s) {', '.join(f'finetuning_combiner.{k}' for k in extra)}; it accepts "
                          "initial_epoch, type, args")
    return {"initial_epoch": block["initial_epoch"], **combiner}


def build_model(config: dict[str, Any], num_classes: int, in_channels: int,
                cls_num_list: Sequence[int] | None = None, load_weights: bool = True) -> nn.Module:
    """The configured architecture plus the extensions its ``arch`` block names; class count, input channels and
    training counts come from the data set (architectures that do not take ``cls_num_list`` never see it).
    ``load_weights=False``: pretrained backbones stay randomly initialised (shape-only builds, no file needed)."""
    arch = config["arch"]
    counts = {} if cls_num_list is None else {"cls_num_list": list(cls_num_list)}
    extensions = [key for key in arch if key not in ARCH_BLOCK_KEYS] if isinstance(arch, dict) else []
    for key in extensions:
        MODEL_EXTENSIONS.get(key, where=f"arch.{key}")
    net = MODELS.build(arch, "arch", siblings=tuple(extensions), num_classes=num_classes, in_channels=in_channels,
                       load_weights=load_weights, **counts)
    for key in extensions:
        if not hasattr(net, "add_extension"):
            raise ConfigError(f"arch.{key} needs a multi-expert backbone (resnet32, resnet50, ...), but arch.type "
                              f"{arch['type']!r} builds {type(net).__name__}")
        net.add_extension(key, MODEL_EXTENSIONS.get(key)(net, arch[key]))
    return net



def build_model_with_sections(config: dict[str, Any], device: torch.device, data: Any, resuming: bool = False
                              ) -> tuple[nn.Module, list[Section], BuildContext]:
    """The model sized from the training set, on ``device``, with every configured section set up on it, and the
    sections' build context (the one way a training loop or a stage builds its network)."""
    ts = data.train_set
    model = build_model(config, ts.num_classes, ts.image_shape[0], ts.cls_num_list).to(device)
    ctx = BuildContext(config, device, ts.num_classes, ts.image_shape[0], ts.cls_num_list, resuming, data)
    sections = build_sections(config)
    for section in sections:
        section.setup(model, ctx)
    return model, sections, ctx

def num_experts_of(net: nn.Module) -> int:
    """Number of experts of a (possibly wrapped) model."""
    return int(getattr(getattr(net, "module", net), "num_experts", 1))


def build_criterion(config: dict[str, Any], cls_num_list: Sequence[int], num_experts: int) -> nn.Module:
    """The configured loss; class counts come from the training set, the expert count from the model."""
    return LOSSES.build(config["loss"], "loss", cls_num_list=list(cls_num_list),
                        num_experts=num_experts)


def check_loss_inputs(criterion: nn.Module, net: nn.Module, sections: Sequence[Section]) -> None:
    """Every extra input the loss needs must come from the model or a config section (fails before any work)."""
    provided = set(getattr(net, "provides", ("output", "logits"))) | {k for s in sections for k in s.provides}
    missing = [name for name in getattr(criterion, "extra_inputs", ()) if name not in provided]
    if missing:
        providers = [name for name, cls in SECTIONS.items() if set(missing) & set(cls.provides)]
        hint = f"; add the config section {' or '.join(repr(p) for p in providers)}" if providers else ""
        raise ConfigError(f"loss {type(criterion).__name__} needs the model output(s) {missing}, which neither the "
                          f"model ({sorted(provided)}) nor a config section provides{hint}")
    for section in sections:
        unused = [k for k in section.provides if k not in getattr(criterion, "extra_inputs", ())]
        if unused:
            raise ConfigError(f"the config section '{section.name}' adds {unused} to the training step but the loss "
                              f"{type(criterion).__name__} does not use it; remove '{section.name}' or use a loss "
                              "that consumes it")


def check_loss_views(criterion: nn.Module, views: int) -> None:
    """A loss that reads k > 1 views of every image needs a training augmentation that makes exactly k views."""
    wanted = int(getattr(criterion, "num_views", 1))
    if wanted > 1 and wanted != views:
        raise ConfigError(f"loss {type(criterion).__name__} compares {wanted} augmented views of every image but the "
                          f"training augmentation (data_loader.args.augment) makes {views}; use "
                          f"{{\"type\": \"multi_view\", \"args\": {{\"views\": [...{wanted} augmentation blocks]}}}}")


def parameter_groups(net: nn.Module, group_lr: dict[str, float]) -> list[dict[str, Any]]:
    """Trainable parameters split by name prefix into groups with their own learning rate (rest: optimizer.args.lr).

    ``optimizer.group_lr`` = ``{"trunk.": 0.001, "branch.": 0.001}`` gives the backbone a smaller rate than the heads
    (SADE's Places-LT fine-tuning); the first matching prefix wins.
    """
    groups: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in group_lr}
    rest = []
    for name, param in net.named_parameters():
        if param.requires_grad:
            prefix = next((p for p in group_lr if name.startswith(p)), None)
            (groups[prefix] if prefix is not None else rest).append(param)
    unused = [p for p, params in groups.items() if not params]
    if unused:
        raise ConfigError(f"optimizer.group_lr prefix(es) {unused} match no trainable parameter; names start with "
                          f"{sorted({n.split('.')[0] + '.' for n, _ in net.named_parameters()})}")
    return [{"params": rest}] + [{"params": params, "lr": float(group_lr[p])} for p, params in groups.items()]


def build_optimizer(config: dict[str, Any], net: nn.Module, prefer_fused: bool = False) -> torch.optim.Optimizer:
    """The configured optimizer over all trainable parameters (per-prefix learning rates from ``optimizer.group_lr``).

    ``prefer_fused`` (fp16 training) selects the fused kernel unless ``optimizer.args.fused`` says otherwise: a fused
    optimizer takes the GradScaler's inf check as a device tensor, so the scaler never reads it on the host.
    """
    group_lr = config["optimizer"].get("group_lr", {})
    if not isinstance(group_lr, dict) or not all(isinstance(v, (int, float)) for v in group_lr.values()):
        raise ConfigError(f"optimizer.group_lr must map parameter-name prefixes to learning rates, got {group_lr!r}")
    block = config["optimizer"]
    fused = {}
    if prefer_fused and "fused" not in (block.get("args") or {}) and "fused" in OPTIMIZERS.signature(block["type"]):
        fused = {"fused": True}
    return OPTIMIZERS.build(block, "optimizer", siblings=("group_lr",), params=parameter_groups(net, group_lr),
                            **fused)


def build_scheduler(config: dict[str, Any], optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The configured per-epoch LR schedule (constant when the config has none)."""
    return SCHEDULERS.build(config.get("lr_scheduler", "constant"), "lr_scheduler", optimizer=optimizer)


def build_combiner(config: dict[str, Any], epoch: int | None = None) -> Combiner:
    """The configured combiner; from ``finetuning_combiner.initial_epoch`` on, that block's combiner."""
    finetune = config.get("finetuning_combiner")
    if finetune is not None and epoch is not None and epoch >= finetune["initial_epoch"]:
        return COMBINERS.build({"type": finetune["type"], "args": finetune["args"]}, "finetuning_combiner")
    return COMBINERS.build(config.get("combiner", "default"), "combiner")


def stage_block(config: dict[str, Any]) -> dict[str, Any]:
    """The ``stage`` block as ``{"type", "args"}`` ("sgd" when absent)."""
    block = config.get("stage", "sgd")
    return {"type": block, "args": {}} if isinstance(block, str) else block


def stage_class(config: dict[str, Any]) -> type:
    """The registered stage class that runs this config."""
    return STAGES.get(stage_block(config).get("type"), where="stage.type")


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory meaning its last.pth."""
    return Path(path) / "last.pth" if Path(path).is_dir() else Path(path)


def load_stage_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """Load the checkpoint an earlier stage wrote (a run directory means its last.pth); a missing file names the key."""
    try:
        return load_checkpoint(checkpoint_path(path))
    except CheckpointError as exc:
        raise CheckpointError(f"{key}: {exc}. Train the earlier stage first and point to its checkpoint, "
                              f"e.g. --set {key}=saved/<name>/seed<seed>-<time>/last.pth") from None


def model_state(net: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(weights to checkpoint, base identity): a model whose frozen weights come from a pretrained file
    (``base_weights``, model/experts.py) saves only the other tensors plus the file's identity, else everything."""
    weights = net.state_dict()
    base = getattr(net, "base_weights", None)
    if base is None:
        return weights, None
    frozen = base.frozen_names(net)
    return {k: v for k, v in weights.items() if k not in frozen}, dict(base.identity)


def parameter_counts(net: nn.Module) -> dict[str, int]:
    """Trainable and total parameter counts (shared tensors once)."""
    params = list(net.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}


def parameter_line(net: nn.Module) -> str:
    """The line every run logs: trainable parameters, their fraction, and where the frozen base comes from."""
    counts = parameter_counts(net)
    base = getattr(net, "base_weights", None)
    origin = f"; base weights {base.identity['library']}:{base.identity['model']} {base.identity.get('tag') or ''} " \
             f"(SHA-256 {base.identity['sha256'][:12]}...)" if base is not None else ""
    return (f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} "
            f"({100.0 * counts['trainable'] / max(counts['total'], 1):.3f}%){origin}")


def load_weights(net: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                 base: dict[str, Any] | None = None) -> None:
    """Strict load of a checkpoint's weights (wrapper prefixes stripped); a mismatch names the file and the cause.

    A checkpoint with a ``base`` identity holds only the tensors that are not the pretrained file's: the model must
    have been rebuilt from the same file (same SHA-256), and exactly the file's parameters may be absent."""
    weights = strip_prefixes(state_dict)
    try:
        if base is None:
            net.load_state_dict(weights)
            return
        own = getattr(net, "base_weights", None)
        if own is None or own.identity.get("sha256") != base.get("sha256"):
            have = "no pretrained file" if own is None else f"{own.identity.get('file')} (SHA-256 {own.identity.get('sha256', '')[:16]}...)"
            raise CheckpointError(f"{source} holds the trained tensors of a model whose base weights are "
                                  f"{base.get('library')}:{base.get('model')} {base.get('tag') or ''} from {base.get('file')} "
                                  f"(SHA-256 {str(base.get('sha256'))[:16]}...), but the rebuilt model has {have}; "
                                  "point arch.args.pretrained_file at the original file")
        missing, unexpected = net.load_state_dict(weights, strict=False)
        absent = sorted(set(missing) - own.names(net))
        if absent or unexpected:
            raise RuntimeError(f"missing keys {absent[:5]}, unexpected keys {sorted(unexpected)[:5]}")
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: the weights do not fit the model its config describes (different "
                              f"arch.args, class count or data set?): {str(exc).splitlines()[0]}") from None


def input_channels(config: dict[str, Any]) -> int:
    """Image channels of the configured data set (known without reading files)."""
    from longtail.data_loader.datasets import dataset_info
    from longtail.data_loader.factory import model_input_shape, split_loader_args

    dataset_args, loader_args = split_loader_args(config["data_loader"])
    shape = dataset_info(config["data_loader"]["type"], dataset_args)["image_shape"]
    return int(model_input_shape(shape, loader_args)[0])


def model_from_checkpoint(state: dict[str, Any], source: str,
                          overrides: Sequence[tuple[str, Any]] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a checkpoint's model from its own (resolved) config and load its weights strictly.

    ``overrides`` (dotted key, value) adjust the stored config first (e.g. a router threshold at test time).
    Returns the model (CPU, eval mode) and the resolved config. The one way the evaluator, teachers and tools
    turn a checkpoint back into a network.
    """
    from longtail.utils.config import set_by_path

    config = json.loads(json.dumps(state["config"]))
    for key, value in overrides:
        set_by_path(config, key, value)
    config = resolve(config)
    counts = list(state["cls_num_list"])
    net = build_model(config, len(counts), input_channels(config), counts)
    weights = state["model"]
    for section in build_sections(config):  # e.g. a weight EMA evaluates its average instead of the trained weights
        weights = section.eval_weights(weights, state.get("sections", {}).get(section.name))
    load_weights(net, weights, source, state.get("base"))
    return net.eval(), config


def build_without_data(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a resolved config and build every object from the data set's registered shape (no files needed)."""
    from longtail.data_loader.datasets import dataset_info
    from longtail.registry import DATASETS
    from longtail.data_loader.factory import build_augment, model_input_shape, split_loader_args

    dataset_args, loader_args = split_loader_args(config["data_loader"])
    name = config["data_loader"].get("type")
    DATASETS.get(name, where="data_loader.type")
    DATASETS.validate_args(name, dataset_args, "data_loader.args", code_supplied={"split"})
    info = dataset_info(name, dataset_args)
    counts = info["cls_num_list"]
    shape = model_input_shape(info["image_shape"], loader_args)
    net = build_model(config, info["num_classes"], shape[0], counts, load_weights=False)
    sections = build_sections(config)
    criterion = build_criterion(config, counts, num_experts_of(net))
    check_loss_inputs(criterion, net, sections)
    stage_class(config).validate_config(config)
    optimizer = build_optimizer(config, net)
    augment = build_augment(info.get("loader", "tensor"), loader_args, info["image_shape"][-1])
    check_loss_views(criterion, num_views(augment))
    return {"model": net, "criterion": criterion, "optimizer": optimizer, "scheduler": build_scheduler(config, optimizer),
            "combiner": build_combiner(config), "augment": augment, "image_shape": shape,
            "cls_num_list": counts, "sections": sections}
