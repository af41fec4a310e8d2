"""CUDA-only checks (marked ``gpu``; skipped without a GPU; run by ``python -m tools.gpu_check``).

* no host synchronisation per training step, detected by CUDA itself (``torch.cuda.set_sync_debug_mode``);
* exact resume with fp16 (GradScaler state) and bf16 autocast;
* DDP with NCCL over the visible GPUs equals one process on the global batch;
* compiled training (inductor, CUDA graphs) matches eager on one step.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from conftest import image_list_config, tiny_config, train_with_interrupt, write_config
from tools.benchmark import synthetic_bundle
from longtail.cli.train import main as train_main
from longtail.core.build import resolve
from longtail.trainer.trainer import Trainer
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.config import apply_overrides, load_config

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore:.*differs from the official")]
ROOT = Path(__file__).resolve().parents[2]


def cuda_trainer(config_path: str, **overrides: object) -> Trainer:
    """A quiet CUDA trainer of a shipped config on synthetic data of its shape."""
    pairs = [("trainer.log_interval", 10**6), ("trainer.tensorboard", False), *overrides.items()]
    config = resolve(apply_overrides(load_config(ROOT / config_path), pairs))
    device = torch.device("cuda")
    return Trainer(config, device, None, None, quiet=True, data=synthetic_bundle(config, device))


def synchronisations(trainer: Trainer, steps: int) -> int:
    """Synchronising CUDA calls (warnings of sync debug mode 1) during one truncated epoch of ``steps`` steps."""
    trainer.data.train_loader.limit_batches = steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(1)
        try:
            trainer.train_epoch(1)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


@pytest.mark.parametrize("config, overrides", [
    ("configs/cifar100_ir100/balpoe_standard.json", {}),
    ("configs/cifar100_ir100/balpoe_long.json", {}),
    ("configs/cifar100_ir100/ride.json", {}),
    ("configs/cifar100_ir100/sade.json", {}),
    ("configs/cifar100_ir100/balpoe_standard.json", {"trainer.amp": "bf16"}),
    ("configs/cifar100_ir100/balpoe_standard.json", {"trainer.amp": "fp16"}),
    ("configs/imagenet_lt/balpoe_resnext50_standard.json", {"data_loader.args.batch_size": 32}),
])
def test_no_host_sync_per_step_on_cuda(config, overrides):
    trainer = cuda_trainer(config, **overrides)
    synchronisations(trainer, 2)  # warm-up (cuDNN autotuning, lazy state)
    few, many = synchronisations(trainer, 2), synchronisations(trainer, 6)
    assert many == few, f"{many - few} synchronisations in 4 extra steps"


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_resume_is_exact_on_cuda(amp, cifar10_dir, tmp_path):
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path, epochs=2, **{
        "trainer.amp": amp, "trainer.deterministic": True}))
    common = ["-c", str(config), "-d", "cuda", "--quiet"]
    assert train_main(common + ["--save_dir", str(tmp_path / "a")]) == 0
    assert train_with_interrupt(common + ["--save_dir", str(tmp_path / "b")], (2, 1)) == 130
    interrupted = next((tmp_path / "b").rglob("last.pth"))
    assert train_main(["-r", str(interrupted), "-d", "cuda", "--quiet"]) == 0
    a, b = load_checkpoint(next((tmp_path / "a").rglob("last.pth"))), load_checkpoint(interrupted)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_ddp_nccl_equals_one_process(imagenet_lt_dir, tmp_path):
    config = image_list_config(imagenet_lt_dir, tmp_path, **{"trainer.sync_batchnorm": True, "combiner": {"type": "default"},
                                                              "trainer.val_period": 0, "trainer.deterministic": True})
    path = write_config(tmp_path / "c.json", config)
    common = ["-c", str(path), "-d", "cuda", "--quiet", "--limit_batches", "2"]
    assert train_main(common + ["--save_dir", str(tmp_path / "single"), "--nproc", "1"]) == 0
    assert train_main(common + ["--save_dir", str(tmp_path / "ddp"), "--nproc", "2"]) == 0
    a = load_checkpoint(next((tmp_path / "single").rglob("last.pth")))
    b = load_checkpoint(next((tmp_path / "ddp").rglob("last.pth")))
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-3, rtol=1e-2), key


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_step_matches_eager_on_cuda(mode):
    losses = {}
    for compile_setting in (False, mode):
        torch.manual_seed(0)
        trainer = cuda_trainer("configs/cifar100_ir100/balpoe_standard.json", **{
            "trainer.compile": compile_setting, "combiner": {"type": "default"}, "trainer.deterministic": True})
        trainer.data.train_loader.limit_batches = 3
        losses[compile_setting] = trainer.train_epoch(1)["loss"]
    assert losses[mode] == pytest.approx(losses[False], rel=1e-3)


def test_benchmark_peak_memory_is_per_setting_on_cuda():
    """Each benchmarked setting reports its own peak: a large earlier allocation must not show in the next window."""
    from tools.benchmark import peak_memory_mb, reset_peak_memory

    device = torch.device("cuda")
    big = torch.empty(512 * 2**20, dtype=torch.uint8, device=device)  # 512 MiB
    del big
    assert peak_memory_mb(device) >= 512
    reset_peak_memory(device)
    small = torch.empty(2**20, dtype=torch.uint8, device=device)
    assert peak_memory_mb(device) < 256
    del small
