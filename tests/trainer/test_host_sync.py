"""No host synchronisation per training step: the calls that block the host on CUDA are counted over N and 3N steps
of a short run on CPU; outside the every-``log_interval`` metric read their number must not grow with the steps."""
from __future__ import annotations

import collections
import contextlib
import traceback
from pathlib import Path
from typing import Iterator

import pytest
import torch
import torch.distributed as dist

from tools.benchmark import synthetic_bundle
from longtail.core.build import resolve
from longtail.trainer.trainer import Trainer
from longtail.utils.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[2]
# Tensor methods that wait for the device (read a value, copy to the host, or size a result by its data)
TENSOR_SYNCS = ("item", "tolist", "cpu", "numpy", "nonzero", "__bool__", "__float__", "__int__", "__index__")
# torch functions that copy Python data to a device (counted when a device is given) or size a result by its data
TORCH_SYNCS = ("tensor", "as_tensor", "nonzero")


class SyncCounter:
    """Counts the instrumented calls and where in this repository they come from."""

    def __init__(self) -> None:
        self.sites: collections.Counter[str] = collections.Counter()

    def record(self, name: str) -> None:
        """Remember one call with its innermost frame in the repository (or the library frame that made it)."""
        frames = traceback.extract_stack()[:-2]
        ours = [f for f in frames if str(ROOT) in f.filename and ".venv" not in f.filename and __file__ != f.filename]
        frame = ours[-1] if ours else frames[-1]
        self.sites[f"{name} at {frame.filename}:{frame.lineno}"] += 1


@contextlib.contextmanager
def counting_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncCounter]:
    """Instrument the synchronising calls while the block runs."""
    counter = SyncCounter()

    def wrap(owner: object, name: str, only_with_device: bool = False) -> None:
        original = getattr(owner, name)

        def counted(*args: object, **kwargs: object) -> object:
            if not only_with_device or kwargs.get("device") is not None:
                counter.record(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)

    for name in TENSOR_SYNCS:
        wrap(torch.Tensor, name)
    for name in TORCH_SYNCS:
        wrap(torch, name, only_with_device=name != "nonzero")
    yield counter


def trainer_for(config_path: str, **overrides: object) -> Trainer:
    """A quiet trainer of a shipped config on synthetic data of its shape (no metric reads between epochs' ends)."""
    pairs = [("trainer.log_interval", 10**6), ("trainer.tensorboard", False), *overrides.items()]
    config = resolve(apply_overrides(load_config(ROOT / config_path), pairs))
    device = torch.device("cpu")
    return Trainer(config, device, None, None, quiet=True, data=synthetic_bundle(config, device))


def syncs_per_run(trainer: Trainer, steps: int, monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Synchronising calls during one (truncated) epoch of ``steps`` training steps."""
    trainer.data.train_loader.limit_batches = steps
    with monkeypatch.context() as patch, counting_syncs(patch) as counter:
        trainer.train_epoch(1)
    return counter.sites


def assert_no_sync_per_step(trainer: Trainer, monkeypatch: pytest.MonkeyPatch, steps: int = 2) -> None:
    """The calls over 3N steps equal those over N steps (what remains is per epoch: the epoch-end metric read)."""
    syncs_per_run(trainer, 1, monkeypatch)  # warm-up: lazily created state
    few, many = syncs_per_run(trainer, steps, monkeypatch), syncs_per_run(trainer, 3 * steps, monkeypatch)
    growth = {site: many[site] - few[site] for site in set(many) | set(few) if many[site] != few[site]}
    assert not growth, f"host synchronisations per {2 * steps} extra steps: {growth}"
    assert sum(few.values()) > 0  # the instrumentation sees the epoch-end read


VIT_ADAPTERS = {"type": "timm", "args": {"model_name": "test_vit", "pretrained": False, "img_size": 32, "num_experts": 3,
                                         "expert_blocks": 1}, "peft": {"type": "adaptformer", "args": {"bottleneck": 4}}}


@pytest.mark.parametrize("config, overrides", [
    ("configs/cifar100_ir100/balpoe_standard.json", {}),                       # crop/flip/rotation, mixup, 3 experts
    ("configs/cifar100_ir100/balpoe_long.json", {}),                           # AutoAugment
    ("configs/cifar100_ir100/ride.json", {}),                                  # RIDE loss (diversity, DRW)
    ("configs/cifar100_ir100/sade.json", {}),
    ("configs/cifar100_ir100/dirmixe.json", {"loss.args.variance_start": 0.0}),  # semi-variance regulariser on
    ("configs/cifar100_ir100/ldam_drw.json", {"loss.args.reweight_epoch": 0}),  # deferred re-weighting active
    ("configs/fmnist_ir100/balpoe.json", {"trainer.amp": "bf16"}),
    ("configs/fmnist_ir100/balpoe.json", {"trainer.amp": "fp16"}),            # GradScaler with a fused SGD
    ("configs/fmnist_ir100/balpoe.json", {"arch.args.batched_experts": True}),
    # the per-step hooks: weight EMA after the update, gradient clipping after backward (fp16: unscaled first)
    ("configs/fmnist_ir100/balpoe.json", {"ema": {"decay": 0.99, "warmup": True}, "grad_clip": {"max_norm": 1.0}}),
    ("configs/fmnist_ir100/balpoe.json", {"trainer.amp": "fp16", "grad_clip": {"max_norm": 1.0}}),
    # a ViT with per-expert AdaptFormer blocks, resized inputs (the model's preprocessing), micro-batches
    ("configs/fmnist_ir100/balpoe.json", {"arch": VIT_ADAPTERS, "trainer.accumulate_steps": 2}),
    pytest.param("configs/cifar100_ir100/balpoe_standard.json", {"arch": VIT_ADAPTERS, "data_loader.args.augment": {
        "type": "resized_crop", "args": {}}}, marks=pytest.mark.slow),
    # multi-view losses (two / three views of every image), the projection branch, independent and fused experts
    ("configs/fmnist_ir100/ncl.json", {}),
    ("configs/fmnist_ir100/mdcs.json", {}),
    ("configs/fmnist_ir100/bcl.json", {}),
    ("configs/fmnist_ir100/shike.json", {}),
])
def test_no_host_sync_per_training_step(config, overrides, monkeypatch):
    trainer = trainer_for(config, **{"data_loader.args.batch_size": 16, **overrides})
    assert_no_sync_per_step(trainer, monkeypatch)


@pytest.mark.slow
def test_no_host_sync_per_step_large_scale(monkeypatch):
    """An ImageNet-LT config (224 px, 3 experts) on in-memory synthetic images."""
    trainer = trainer_for("configs/imagenet_lt/ride_resnet10.json", **{"data_loader.args.batch_size": 4})
    assert_no_sync_per_step(trainer, monkeypatch, steps=1)


def test_fp16_selects_a_fused_optimizer_so_the_scaler_does_not_read_its_inf_check():
    trainer = trainer_for("configs/fmnist_ir100/balpoe.json", **{"trainer.amp": "fp16"})
    assert trainer.optimizer.defaults["fused"] is True and trainer.scaler is not None
    assert trainer_for("configs/fmnist_ir100/balpoe.json").optimizer.defaults.get("fused") in (None, False)


def test_sync_batchnorm_forward_makes_no_host_tensor(monkeypatch):
    """SyncBN training forward under a (faked) 2-process group: statistics are reduced without host-made tensors."""
    from longtail.model.layers import ExpertBatchNorm2d

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, *a, **k: tensor.mul_(2))  # the other rank: same batch
    bn = ExpertBatchNorm2d(2, 4).train()
    bn.sync = True
    x = torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    with monkeypatch.context() as patch, counting_syncs(patch) as counter:
        out = bn(x, expert=1)
        out.sum().backward() if out.requires_grad else None
    assert not counter.sites, dict(counter.sites)
    # two identical halves of the global batch: the global statistics are this batch's own
    expected = torch.nn.functional.batch_norm(x, None, None, training=True, eps=bn.eps)
    assert torch.allclose(out, expected, atol=1e-5)
