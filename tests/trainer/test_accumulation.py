"""Gradient accumulation (trainer.accumulate_steps): k micro-batches of b images give the update of one batch of
k * b images for a model without batch-dependent layers, with and without the fp16 GradScaler."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from longtail.core.build import resolve
from longtail.trainer.trainer import Trainer
from longtail.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


def no_batchnorm_config(data_dir, save_dir, batch_size: int, accumulate: int, amp: str = "off") -> dict:
    """A LayerNorm-only ViT (timm test_vit at 32 px), no augmentation, no mixing: a batch's gradient is the mean of
    per-image gradients, whatever the batch is split into."""
    config = tiny_config(data_dir, save_dir, epochs=1)
    config["arch"] = {"type": "timm", "args": {"model_name": "test_vit", "pretrained": False, "img_size": 32,
                                                 "num_experts": 3, "expert_blocks": 1}}
    config["data_loader"]["args"].update({"batch_size": batch_size, "augment": "none"})
    config["combiner"] = {"type": "default"}
    config["trainer"].update({"accumulate_steps": accumulate, "amp": amp})
    config["optimizer"]["args"].update({"weight_decay": 0.0005})
    return resolve(config)


def trained_weights(config: dict, steps: int) -> dict[str, torch.Tensor]:
    """The weights after ``steps`` micro-batches of epoch 1 (one optimizer update in both settings below)."""
    trainer = Trainer(config, torch.device("cpu"), limit_batches=steps, quiet=True)
    if trainer.scaler is not None:  # a scale whose fp16 gradients stay finite here (65536 overflows: no update)
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    assert trainer.train_epoch(1) is not None
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("amp,tolerance", [("off", 1e-6), pytest.param("fp16", 2e-3, marks=pytest.mark.slow)])
def test_micro_batches_equal_one_large_batch(cifar10_dir, tmp_path, amp, tolerance):
    if amp == "fp16":  # the GradScaler path: scaled micro-batch losses, one unscale and step per group
        assert torch.amp.GradScaler("cpu").is_enabled()
    large = trained_weights(no_batchnorm_config(cifar10_dir, tmp_path, 32, 1, amp), 1)
    micro = trained_weights(no_batchnorm_config(cifar10_dir, tmp_path, 8, 4, amp), 4)
    initial = Trainer(no_batchnorm_config(cifar10_dir, tmp_path, 32, 1, amp), torch.device("cpu"), quiet=True)
    changed = 0
    for key, value in large.items():
        assert torch.allclose(micro[key], value, atol=tolerance, rtol=tolerance), key
        changed += int(not torch.equal(value, initial.model.state_dict()[key]))
    assert changed > 10  # the update happened (in both)


@pytest.mark.slow
def test_two_groups_are_two_updates_and_bad_values_are_named(cifar10_dir, tmp_path):
    config = no_batchnorm_config(cifar10_dir, tmp_path, 8, 2)
    trainer = Trainer(config, torch.device("cpu"), limit_batches=4, quiet=True)
    steps = []
    original = trainer._optimizer_step
    trainer._optimizer_step = lambda: (steps.append(1), original())  # type: ignore[method-assign]
    trainer.train_epoch(1)
    assert len(steps) == 2
    trainer = Trainer(no_batchnorm_config(cifar10_dir, tmp_path, 8, 3), torch.device("cpu"), limit_batches=4, quiet=True)
    calls = []
    trainer._optimizer_step = lambda: calls.append(1)  # type: ignore[method-assign]
    trainer.train_epoch(1)
    assert len(calls) == 2  # after micro-batch 3 and after the epoch's last (4th) one
    bad = tiny_config(cifar10_dir, tmp_path)
    bad["trainer"]["accumulate_steps"] = 0
    with pytest.raises(ConfigError, match="accumulate_steps"):
        resolve(bad)


@pytest.mark.slow
def test_ddp_skips_the_all_reduce_on_micro_batches_that_do_not_end_a_group(cifar10_dir, tmp_path):
    import contextlib
    import types

    trainer = Trainer(no_batchnorm_config(cifar10_dir, tmp_path, 8, 2), torch.device("cpu"), quiet=True)
    entered = []
    trainer.step_model.no_sync = lambda: contextlib.nullcontext(entered.append(1))  # what DDP provides
    trainer.dist = types.SimpleNamespace(is_distributed=True)
    with trainer._gradient_sync(update=False):
        pass
    with trainer._gradient_sync(update=True):
        pass
    assert entered == [1]  # only the micro-batch that does not end its group skips the gradient all-reduce


def test_the_batch_line_multiplies_processes_images_and_micro_batches():
    """The start-of-run line names each factor of the effective batch and their product."""
    from longtail.trainer.run import batch_line
    assert batch_line(2, 4, 1, 0.1) == "batch: 2 processes x 4 images = 8 images per update at lr 0.1"
    assert batch_line(1, 16, 3, 0.05) == ("batch: 1 process x 16 images x 3 accumulated micro-batches = 48 images per "
                                          "update at lr 0.05")
