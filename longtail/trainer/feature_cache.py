"""Training on cached features (``trainer.cache_features``): when the whole backbone (trunk and branch) is frozen
(linear probe, cRT / LWS heads, classifier calibration), its pooled features of every training image are computed
once and the heads are trained on them. The epochs see the same samples in the same order as the uncached run (the
epoch order depends only on the labels and the seed), so the result is the same when the frozen part is a fixed
function in training mode (no dropout / drop-path; frozen BatchNorm in eval mode) and each image is the same every
epoch (no augmentation, no image mixing). Validation still runs the whole model on the test images.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch
import torch.nn as nn

from longtail.data_loader.factory import DataBundle, plain_loader
from longtail.data_loader.loader import BatchLoader
from longtail.utils.device import autocast_context
from longtail.utils.errors import ConfigError


@dataclasses.dataclass
class FeatureDataset:
    """Pooled features (N, E, D) of a training set in its index order, served like in-memory images."""

    loader_kind = "tensor"
    images: torch.Tensor
    targets: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def model_input(self, images: torch.Tensor, channels_last: bool = False, train: bool = True,
                    views: Any = None) -> torch.Tensor:
        """Features need no preprocessing."""
        return images


class FeatureHead(nn.Module):
    """The trained part of the model applied to cached features: heads and extensions (MultiExpertModel.from_features)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.from_features(features)


def check_cacheable(config: dict[str, Any], model: nn.Module) -> None:
    """The backbone is frozen, the images are the same every epoch and nothing mixes them."""
    trained = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith(("trunk.", "branch."))]
    if trained or not hasattr(model, "from_features"):
        raise ConfigError("trainer.cache_features needs a multi-expert model whose backbone is frozen (arch.peft "
                          f"linear, or init_from.freeze [\"trunk.\", \"branch.\"]); trainable backbone tensors: {trained[:3]}")
    augment = (config["data_loader"].get("args") or {}).get("augment")
    if augment not in ("none", None) and not (isinstance(augment, dict) and augment.get("type") == "none"):
        raise ConfigError("trainer.cache_features computes each image's features once with the test transform: set "
                          "data_loader.args.augment to \"none\"")
    if config.get("combiner", {}).get("type", "default") != "default" or "finetuning_combiner" in config:
        raise ConfigError("trainer.cache_features: a combiner that mixes images (mixup, cutmix) cannot use cached "
                          "features; use the default combiner")


@torch.no_grad()
def compute_features(model: nn.Module, loader: Any, amp: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, E, D) float32, targets) of every image of ``loader`` in order, the model in eval mode."""
    was_training = model.training
    model.eval()
    feats, targets = [], []
    for images, target in loader.batches(0):
        with autocast_context(loader.device, amp):
            feats.append(model.features(images).float())
        targets.append(target)
    model.train(was_training)
    return torch.cat(feats), torch.cat(targets)


def cached_training(trainer: Any, step_model: nn.Module) -> tuple[DataBundle, nn.Module]:
    """The run's data with a training loader over cached features, and the module its steps call."""
    model = trainer.model
    if step_model is not model:
        raise ConfigError("trainer.cache_features: a config section replaces the trained module; "
                          "train without the feature cache")
    check_cacheable(trainer.config, model)
    start = time.perf_counter()
    source = trainer.data.train_loader
    feats, targets = compute_features(model, plain_loader(trainer.config, trainer.data.train_set, trainer.device),
                                      trainer.amp)
    trainer.feature_cache_seconds = time.perf_counter() - start
    dataset = FeatureDataset(feats, targets, trainer.data.train_set.num_classes)
    loader = BatchLoader(dataset, source.batch_size, source.sampler, None, source.seed, source.drop_last, False,  # type: ignore[arg-type]
                         source.limit_batches, source.rank, source.world_size)
    trainer.logger.info(f"cached features of {len(dataset)} training images ({tuple(feats.shape[1:])} each) in "
                        f"{trainer.feature_cache_seconds:.1f}s")
    return dataclasses.replace(trainer.data, train_loader=loader), FeatureHead(model)
