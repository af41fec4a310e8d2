"""Mixed precision smoke tests on CPU: bf16 autocast, fp16 with a GradScaler (state checkpointed), fp32 weights."""
import copy
import math

import pytest
import torch

from conftest import tiny_config, write_config
from longtail.cli.train import main as train_main
from longtail.utils.checkpoint import load_checkpoint


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


def overflowing_steps(optimizer, model, steps=4):
    """fp16 autocast steps with a GradScaler; the first step's gradients overflow, so the scaler skips it."""
    scaler = torch.amp.GradScaler("cpu")
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = torch.randn(16, 6, generator=gen) * (1e4 if step == 0 else 1.0)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().pow(2).mean() * (1e3 if step == 0 else 1.0)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return scaler


def two_models():
    """Two identical small networks."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    twin.load_state_dict(model.state_dict())
    return model, twin


def test_fused_sgd_survives_a_skipped_first_step():
    """torch's fused SGD leaves its momentum buffers uninitialised when the scaler skips the first step; ours starts
    them at zero, so fused and plain SGD take the same steps (plain SGD has no such problem)."""
    from longtail.registry import OPTIMIZERS

    args = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}
    model, twin = two_models()
    fused = OPTIMIZERS.build({"type": "sgd", "args": {**args, "fused": True}}, "optimizer", params=model.parameters())
    plain = OPTIMIZERS.build({"type": "sgd", "args": args}, "optimizer", params=twin.parameters())
    assert all(torch.equal(fused.state[p]["momentum_buffer"], torch.zeros_like(p)) for p in model.parameters())
    scale = overflowing_steps(fused, model).get_scale()
    assert scale == overflowing_steps(plain, twin).get_scale() == 2.0 ** 15  # one skipped step, three taken
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.isfinite(p).all() and torch.allclose(p, q, atol=1e-6), (p, q)


def test_fused_sgd_resumes_a_state_without_some_buffers():
    """A checkpoint of plain SGD where one parameter never had a gradient loads into fused SGD with a zero buffer."""
    from longtail.registry import OPTIMIZERS

    args = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False}
    model, twin = two_models()
    plain = OPTIMIZERS.build({"type": "sgd", "args": args}, "optimizer", params=twin.parameters())
    twin[2].bias.requires_grad_(False)
    overflowing_steps(plain, twin, steps=2)
    twin[2].bias.requires_grad_(True)
    assert twin[2].bias not in plain.state  # no buffer for the parameter without gradients
    model.load_state_dict(twin.state_dict())
    fused = OPTIMIZERS.build({"type": "sgd", "args": {**args, "fused": True}}, "optimizer", params=model.parameters())
    fused.load_state_dict(copy.deepcopy(plain.state_dict()))  # as from a file: no buffer shared with `plain`
    assert torch.equal(fused.state[model[2].bias]["momentum_buffer"], torch.zeros(3))
    before = model[2].bias.detach().clone()
    model[2].bias.grad, twin[2].bias.grad = torch.ones(3), torch.ones(3)
    for p, q in zip(model.parameters(), twin.parameters()):
        p.grad = q.grad = torch.full_like(p, 0.5) if p.grad is None else p.grad
    fused.step()
    plain.step()
    assert torch.allclose(model[2].bias, before - 0.1 * 1.0)  # first momentum step: buffer = gradient
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_fp16_training_keeps_finite_weights_past_skipped_steps(cifar10_dir, tmp_path):
    """fp16 picks the fused optimizer; its first steps overflow (scale 2^16) and are skipped, the later ones train."""
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path, epochs=2, **{"trainer.amp": "fp16"}))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "4"]) == 0
    state = load_checkpoint(next(tmp_path.rglob("last.pth")))
    assert state["scaler"]["scale"] < 2.0 ** 16  # at least one step was skipped
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(math.isfinite(h["loss"]) for h in state["history"])
    assert state["history"][1]["loss"] < state["history"][0]["loss"]
