"""trainer.cache_features: heads trained on features computed once equal the uncached run; the backbone runs once."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from longtail.core.build import resolve
from longtail.trainer.trainer import Trainer
from longtail.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


def probe_config(data_dir, save_dir, cache: bool, **changes) -> dict:
    """Linear probe of a frozen ViT (3 heads, cosine), no augmentation, no mixing."""
    config = tiny_config(data_dir, save_dir, epochs=2)
    config["arch"] = {"type": "timm", "args": {"model_name": "test_vit", "pretrained": False, "img_size": 32,
                                                 "num_experts": 3}, "peft": "linear"}
    config["data_loader"]["args"].update({"augment": "none", "batch_size": 16})
    config["combiner"] = {"type": "default"}
    config["trainer"]["cache_features"] = cache
    config.update(changes)
    return resolve(config)


def train_two_epochs(config: dict) -> tuple[Trainer, dict[str, torch.Tensor]]:
    trainer = Trainer(config, torch.device("cpu"), limit_batches=4, quiet=True)
    for epoch in (1, 2):
        trainer.train_epoch(epoch)
    return trainer, {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_cached_features_train_the_same_heads(cifar10_dir, tmp_path):
    _, uncached = train_two_epochs(probe_config(cifar10_dir, tmp_path, False))
    trainer, cached = train_two_epochs(probe_config(cifar10_dir, tmp_path, True))
    assert uncached.keys() == cached.keys()
    for key, value in uncached.items():
        assert torch.allclose(cached[key], value, atol=1e-6, rtol=1e-5), key
    assert not torch.equal(uncached["head.weight"], Trainer(probe_config(cifar10_dir, tmp_path, False),
                                                            torch.device("cpu"), quiet=True).model.head.weight)
    calls = []
    trainer.model.trunk.register_forward_hook(lambda *a: calls.append(1))
    trainer.train_epoch(3)
    assert not calls  # training epochs never run the backbone
    assert trainer.data.train_loader.dataset.images.shape[1:] == (3, trainer.model.feature_dim)


def test_cache_refuses_a_trained_backbone_augmentation_and_mixing(cifar10_dir, tmp_path):
    full = probe_config(cifar10_dir, tmp_path, True)
    full["arch"]["peft"] = {"type": "full", "args": {}}
    with pytest.raises(ConfigError, match="frozen"):
        Trainer(full, torch.device("cpu"), quiet=True)
    augmented = probe_config(cifar10_dir, tmp_path, True)
    augmented["data_loader"]["args"]["augment"] = {"type": "standard", "args": {}}
    with pytest.raises(ConfigError, match="augment"):
        Trainer(augmented, torch.device("cpu"), quiet=True)
    with pytest.raises(ConfigError, match="combiner"):
        Trainer(probe_config(cifar10_dir, tmp_path, True, combiner={"type": "mixup", "args": {"alpha": 0.4}}),
                torch.device("cpu"), quiet=True)
