"""Mixed precision smoke tests on CPU: bf16 autocast, fp16 with a GradScaler (state checkpointed), fp32 weights."""
import math

import pytest
import torch

from conftest import tiny_config, write_config
from tools.train import main as train_main
from utils.checkpoint import load_checkpoint


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # fp16: scaler skips inf steps
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_with_fp32_master_weights(amp, cifar10_dir, tmp_path):
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path, epochs=1, **{"trainer.amp": amp}))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "2"]) == 0
    state = load_checkpoint(next(tmp_path.rglob("last.pth")))
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert math.isfinite(state["history"][0]["loss"]) and math.isfinite(state["history"][0]["val_loss"])
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0  # GradScaler state travels with the checkpoint for exact resume
    else:
        assert state["scaler"] is None
