"""Class-Balanced Experts (Sharma et al., GCPR 2020) as a plugin (docs/methods.md, Class-Balanced Experts).

Group experts with an "other" output fused by a joint calibration module. Each expert covers one shot group (many /
medium / few classes from the training counts) plus an "other" output; the calibration module rescales every
expert's outputs (per-output temperature and bias), turns them into probabilities, drops "other", scatters the group
probabilities to their classes and renormalises over all classes.

Registers the model ``class_balanced_experts``, the config section ``ensemble`` (``{"checkpoints": [many, medium,
few]}``: the trained group experts) and the stage ``cbe_calibration``: the experts' raw logits on the held-out part
of the training split (the ``val`` split of the ``subset`` data set: images no expert was trained on) are computed
once, and only the per-output temperatures and biases are trained on them with the configured loss / optimizer /
schedule. The experts themselves are trained by plain SGD stages on ``subset`` data with a ``group``.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.core.build import build_criterion, build_model, build_optimizer, build_scheduler, load_weights
from longtail.core.hooks import Section
from longtail.core.logits import masks_for, validation_metrics
from longtail.data_loader.datasets import ImageTensorDataset
from longtail.data_loader.factory import build_data, build_dataset, split_loader_args
from longtail.data_loader.loader import BatchLoader
from longtail.model.losses.base import at_least_fp32
from longtail.registry import DATASETS, MODELS, SECTIONS, STAGES
from longtail.trainer.stages import Stage, StopRequest
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.defaults import CACHED_BATCH_SIZE, FEW_THRESHOLD, MANY_THRESHOLD
from longtail.utils.errors import CheckpointError, ConfigError
from longtail.utils.metrics import group_classes
from longtail.utils.seed import Stream, torch_generator

# data_loader.args of the experts that must equal the calibration config's, so the held-out images are unseen
SHARED_DATA_KEYS = ("holdout_fraction", "holdout_max_per_class", "seed", "many_threshold", "few_threshold")
LOCAL_BASE_KEYS = ("data_dir", "download")  # may differ between machines


class ExpertCalibration(nn.Module):
    """Fuses the raw logits of group experts (each k_e + 1 outputs, "other" last) into log-probabilities over C classes.

    ``q_e = softmax(T_e * (z_e + [0, ..., 0, log((1 + r_e) / 2)]) + b_e)``; the first k_e entries of q_e go to the
    expert's classes; the C-vector is renormalised and its log returned. The groups must partition the classes.
    Biases start at 0 (the reference starts at 1, which is the same softmax: a shared shift per expert cancels).
    """

    def __init__(self, class_lists: Sequence[Sequence[int]], num_classes: int) -> None:
        super().__init__()
        covered = sorted(c for classes in class_lists for c in classes)
        if covered != list(range(num_classes)):
            raise ValueError(f"the expert groups must cover each of the {num_classes} classes exactly once, "
                             f"got {len(covered)} class slots ({len(set(covered))} distinct)")
        self.num_classes = num_classes
        for e, classes in enumerate(class_lists):
            self.register_buffer(f"classes{e}", torch.as_tensor(list(classes), dtype=torch.long))
        sizes = [len(classes) + 1 for classes in class_lists]
        self.temperature = nn.ParameterList([nn.Parameter(torch.ones(k)) for k in sizes])
        self.bias = nn.ParameterList([nn.Parameter(torch.zeros(k)) for k in sizes])
        # log((1 + r_e) / 2) added to each expert's "other" logit; set from the experts' open-set ratios r_e
        self.register_buffer("other_shift", torch.zeros(len(class_lists)))

    @property
    def num_groups(self) -> int:
        """Number of group experts."""
        return len(self.temperature)

    def classes(self, expert: int) -> torch.Tensor:
        """Original class indices covered by ``expert`` (ascending; its output i is class classes[i])."""
        return getattr(self, f"classes{expert}")

    def set_open_ratios(self, ratios: Sequence[float]) -> None:
        """Set the "other"-logit pre-adjustment log((1 + r) / 2) from each expert's open-set sampling ratio r."""
        if len(ratios) != self.num_groups:
            raise ValueError(f"need one open-set ratio per expert ({self.num_groups}), got {len(ratios)}")
        self.other_shift.copy_(torch.tensor([math.log((1.0 + r) / 2.0) for r in ratios]))

    def forward(self, expert_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw expert logits [(B, k_e + 1)] -> fused log-probabilities (B, C), computed in log space (no underflow)."""
        group_log_probs = []
        for e, logits in enumerate(expert_logits):
            logits = at_least_fp32(logits)
            adjusted = torch.cat([logits[:, :-1], logits[:, -1:] + self.other_shift[e]], dim=1)
            group_log_probs.append(F.log_softmax(self.temperature[e] * adjusted + self.bias[e], dim=1)[:, :-1])
        log_probs = group_log_probs[0].new_zeros(group_log_probs[0].shape[0], self.num_classes)
        for e, log_q in enumerate(group_log_probs):
            log_probs = log_probs.index_copy(1, self.classes(e), log_q)
        return log_probs - torch.logsumexp(log_probs, dim=1, keepdim=True)


class ClassBalancedExperts(nn.Module):
    """Frozen group experts (complete single-expert networks) + the trainable joint calibration module.

    ``forward`` returns the fused log-probabilities as ``output`` and as a one-"expert" ``logits`` (B, 1, C), so the
    shared evaluation (accuracy, calibration, post-hoc prior correction) treats the combination like any model.
    """

    num_experts = 1  # one fused prediction as far as losses and the evaluator are concerned

    def __init__(self, experts: Sequence[nn.Module], calibration: ExpertCalibration) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.calibration = calibration
        self.experts.requires_grad_(False)
        self.experts.eval()

    def train(self, mode: bool = True) -> "ClassBalancedExperts":
        """Only the calibration module changes mode; the experts stay in eval mode (fixed BN statistics)."""
        super().train(mode)
        self.experts.eval()
        return self

    def expert_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw logits of every group expert, [(B, k_e + 1)]."""
        return [expert(x)["output"] for expert in self.experts]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        log_probs = self.calibration(self.expert_logits(x))
        return {"output": log_probs, "logits": log_probs.unsqueeze(1)}


@MODELS.register("class_balanced_experts")
def class_balanced_experts(num_classes: int, in_channels: int = 3, cls_num_list: list[int] | None = None,
                           expert_arch: dict[str, Any] | None = None, groups: list[str] = ("many", "medium", "few"),  # type: ignore[assignment]
                           many_threshold: int = MANY_THRESHOLD, few_threshold: int = FEW_THRESHOLD) -> ClassBalancedExperts:
    """One ``expert_arch`` network per class group (k_e + 1 outputs, "other" last) + joint calibration.

    The groups come from the training counts with the evaluation rule (many: n > many_threshold, few:
    n < few_threshold); closed classes are numbered in increasing original-label order, as in the expert data sets.
    """
    if cls_num_list is None:
        raise ConfigError("arch 'class_balanced_experts' needs the training class counts (cls_num_list) to form its groups")
    if not expert_arch:
        raise ConfigError("arch.args.expert_arch must describe the experts' network, e.g. "
                          '{"type": "resnet32", "args": {"num_experts": 1, "use_norm": false}}')
    class_lists = [group_classes(cls_num_list, g, many_threshold, few_threshold) for g in groups]
    experts = []
    for group, classes in zip(groups, class_lists):
        if not classes:
            raise ConfigError(f"class group {group!r} is empty for these training counts (thresholds {many_threshold}/"
                              f"{few_threshold}); remove it from arch.args.groups or change the thresholds")
        expert = MODELS.build(expert_arch, "arch.args.expert_arch", num_classes=len(classes) + 1, in_channels=in_channels)
        if getattr(expert, "num_experts", 1) != 1:
            raise ConfigError("arch.args.expert_arch must build a single-expert network (num_experts 1)")
        experts.append(expert)
    return ClassBalancedExperts(experts, ExpertCalibration(class_lists, num_classes))


def _defaults(registry: Any, name: str) -> dict[str, Any]:
    """Default values of a registered constructor's arguments."""
    return {k: p.default for k, p in registry.signature(name).items() if p.default is not inspect.Parameter.empty}


def _data_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``subset`` data set arguments of a config, with the builder's defaults filled in."""
    block = config["data_loader"]
    if block.get("type") != "subset":
        raise ConfigError("Class-Balanced Experts need data_loader.type 'subset' (holdout_fraction > 0), got "
                          f"{block.get('type')!r}")
    return {**_defaults(DATASETS, "subset"), **split_loader_args(block)[0]}


def _portable_base(base: dict[str, Any]) -> dict[str, Any]:
    """The base data set block without machine-specific keys."""
    return {"type": base.get("type"), "args": {k: v for k, v in (base.get("args") or {}).items() if k not in LOCAL_BASE_KEYS}}


def check_expert(expert_config: dict[str, Any], config: dict[str, Any], group: str, path: Path) -> float:
    """Verify an expert checkpoint fits the calibration config; returns its open-set ratio r."""
    mine, theirs = _data_args(config), _data_args(expert_config)
    if theirs.get("group") != group:
        raise ConfigError(f"{path} is the {theirs.get('group')!r} expert but arch.args.groups expects {group!r} at "
                          "this position; pass the experts in the order of arch.args.groups")
    for key in SHARED_DATA_KEYS:
        if theirs.get(key) != mine.get(key):
            raise ConfigError(f"{path}: data_loader.args.{key} is {theirs.get(key)!r} there but {mine.get(key)!r} here; "
                              "experts and calibration must use the same held-out split and groups")
    if _portable_base(theirs["base"]) != _portable_base(mine["base"]):
        raise ConfigError(f"{path} was trained on a different data set ({_portable_base(theirs['base'])}) than "
                          f"data_loader.args.base here ({_portable_base(mine['base'])})")
    return float(theirs["open_ratio"])


def load_experts(model: nn.Module, config: dict[str, Any]) -> None:
    """Load ensemble.checkpoints into the model's group experts and set their "other" pre-adjustment."""
    groups = config["arch"].get("args", {}).get("groups", _defaults(MODELS, config["arch"]["type"]).get("groups"))
    paths = (config.get("ensemble") or {}).get("checkpoints")
    if not isinstance(paths, list) or len(paths) != len(model.experts):
        raise ConfigError(f"ensemble.checkpoints must list {len(model.experts)} expert checkpoints in the order "
                          f"{list(groups)}, got {paths!r}")
    ratios = []
    for expert, group, path in zip(model.experts, groups, map(Path, paths)):
        if not path.is_file():
            raise CheckpointError(f"expert checkpoint {path} not found: train the {group!r} expert first and list the "
                                  "checkpoints in ensemble.checkpoints (MANY, MEDIUM, FEW)")
        state = load_checkpoint(path)
        ratios.append(check_expert(state["config"], config, group, path))
        load_weights(expert, state["model"], f"{path} (arch.args.expert_arch must equal the expert's own arch)")
    model.calibration.set_open_ratios(ratios)


@torch.inference_mode()
def held_out_logits(model: nn.Module, dataset: ImageTensorDataset, batch_size: int,
                    channels_last: bool) -> list[torch.Tensor]:
    """Raw logits of every group expert on ``dataset`` (computed once), [(N, k_e + 1)]."""
    model.eval()
    chunks: list[list[torch.Tensor]] = [[] for _ in model.experts]
    for images, _ in BatchLoader(dataset, batch_size, "sequential", None, channels_last=channels_last).batches(0):
        for store, logits in zip(chunks, model.expert_logits(images)):
            store.append(logits.float())
    return [torch.cat(store) for store in chunks]


def calibration_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                      logits: list[torch.Tensor], targets: torch.Tensor, batch_size: int, seed: int,
                      epoch: int) -> dict[str, float]:
    """One pass over the cached expert logits in a seeded order; returns loss and accuracy of the epoch."""
    model.train()
    order = torch.randperm(len(targets), generator=torch_generator("cpu", seed, epoch, Stream.CALIBRATION_ORDER))
    order = order.to(targets.device)
    loss_sum = correct = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        log_probs = model.calibration([z[idx] for z in logits])
        loss = criterion(log_probs.unsqueeze(1), targets[idx]).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += float(loss.detach()) * len(idx)
        correct += float((log_probs.argmax(dim=1) == targets[idx]).sum())
    return {"loss": loss_sum / len(order), "accuracy": 100.0 * correct / len(order),
            "lr": optimizer.param_groups[0]["lr"]}


@SECTIONS.register("ensemble")
class Ensemble(Section):
    """``"ensemble": {"checkpoints": [many, medium, few]}``: the trained group experts a calibration fuses."""

    keys = {"checkpoints": list}
    required = ("checkpoints",)

    def checkpoints(self) -> dict[str, str]:
        """Every expert checkpoint."""
        return {f"ensemble.checkpoints[{i}]": str(p) for i, p in enumerate(self.spec["checkpoints"])}


@STAGES.register("cbe_calibration")
class CalibrationStage(Stage):
    """Fit the joint calibration of frozen group experts on their held-out logits (computed once)."""

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Subset data with a held-out part and no group; the experts to fuse in ``ensemble``."""
        data_args = _data_args(config)
        if data_args.get("group") is not None or data_args["holdout_fraction"] <= 0:
            raise ConfigError("the calibration config needs data_loader.args.group null (all classes) and "
                              "holdout_fraction > 0 (the held-out part it is fitted on)")
        if "ensemble" not in config:
            raise ConfigError('the cbe_calibration stage fuses trained experts: add "ensemble": {"checkpoints": '
                              '[MANY.pth, MEDIUM.pth, FEW.pth]}')

    @classmethod
    def check_inputs(cls, config: dict[str, Any]) -> None:
        """Each expert checkpoint exists and was trained on this config's held-out split and groups."""
        arch_args = config["arch"].get("args", {})
        groups = arch_args.get("groups", _defaults(MODELS, config["arch"]["type"]).get("groups"))
        paths = config["ensemble"]["checkpoints"]
        if len(paths) != len(groups):
            raise ConfigError(f"ensemble.checkpoints must list {len(groups)} expert checkpoints in the order "
                              f"{list(groups)}, got {len(paths)}")
        for group, path in zip(groups, map(Path, paths)):
            if not path.is_file():
                raise CheckpointError(f"expert checkpoint {path} not found: train the {group!r} expert first and list "
                                      "the checkpoints in ensemble.checkpoints (MANY, MEDIUM, FEW)")
            check_expert(load_checkpoint(path)["config"], config, group, path)

    def __init__(self, config: dict[str, Any], device: torch.device, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, device, *args, **kwargs)
        self.validate_config(config)
        data_args = _data_args(config)
        base = data_args["base"]
        if data_args.get("data_dir"):  # the subset's data_dir replaces the wrapped data set's
            base = {**base, "args": {**(base.get("args") or {}), "data_dir": data_args["data_dir"]}}
        self.cls_num_list = DATASETS.build(base, "data_loader.args.base", split="train").cls_num_list
        held = build_dataset(config, "val").to(device)
        self.model = build_model(config, held.num_classes, held.image_shape[0], self.cls_num_list).to(device)
        load_experts(self.model, config)
        channels_last = bool(config["trainer"]["channels_last"])
        self.logits = held_out_logits(self.model, held, config["evaluation"]["test_batch_size"], channels_last)
        self.targets = held.targets
        self.criterion = build_criterion(config, held.cls_num_list, 1).to(device)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer)
        self.batch_size = int(split_loader_args(config["data_loader"])[1].get("batch_size", CACHED_BATCH_SIZE))
        if self.resume_state is not None:
            self.restore(self.resume_state)

    def fit(self) -> dict[str, Any]:
        """Train the calibration parameters for the remaining epochs, then evaluate on the test split."""
        epochs = self.cfg_trainer["epochs"]
        self.logger.info(f"held-out part: {len(self.targets)} images; expert outputs {[z.shape[1] for z in self.logits]}")
        with StopRequest() as stop:
            for epoch in range(self.start_epoch, epochs + 1):
                metrics = {"epoch": epoch, **calibration_epoch(self.model, self.optimizer, self.criterion, self.logits,
                                                               self.targets, self.batch_size, self.seed, epoch)}
                self.scheduler.step()
                self.history.append(metrics)
                for callback in self.callbacks:
                    callback(self, epoch, 0)
                if epoch % 10 == 0 or epoch == epochs:
                    self.logger.info(f"epoch {epoch}/{epochs} | loss {metrics['loss']:.4f} | held-out acc "
                                     f"{metrics['accuracy']:.2f}%")
                if stop.requested and epoch < epochs:
                    path = self.save("last.pth", epoch)
                    self.logger.info(f"interrupted after epoch {epoch}; saved {path}. Resume with: python train.py -r {path}")
                    return {"interrupted": True, "epoch": epoch}
        if self.history and self.start_epoch <= epochs:
            test = build_data(self.config, self.device, train=False)
            self.history[-1].update(validation_metrics(self.model, test.test_loader,
                                                       masks_for(self.cls_num_list, self.config["evaluation"])))
            last = self.history[-1]
            self.logger.info(f"test accuracy {last['val_accuracy']:.2f}% (many {last['val_many']:.1f} / medium "
                             f"{last['val_medium']:.1f} / few {last['val_few']:.1f})".replace("nan", "n/a"))
        self.save("last.pth", epochs)
        self.save_history()
        return self.history[-1] if self.history else {}
