"""The per-step hooks, proven by two plugins that touch no engine file: weight EMA and gradient-norm clipping.

Each is checked against a hand computation from the trained weights / gradients of an identical run, and the EMA
against exact resume and evaluation with the averaged weights."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_config, train_with_interrupt, write_config
from longtail.cli.train import main as train_main
from longtail.core.build import model_from_checkpoint, resolve
from longtail.core.logits import masks_for, validation_metrics
from longtail.trainer.trainer import Trainer
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.errors import ConfigError


def plain_config(data_dir, save_dir, **extra):
    """One-expert CE with plain SGD (no momentum, no weight decay) so that an update is w - lr * g."""
    return tiny_config(data_dir, save_dir, epochs=1, loss={"type": "ce", "args": {}}, combiner={"type": "default"},
                       optimizer={"type": "sgd", "args": {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}},
                       lr_scheduler={"type": "constant", "args": {}},
                       **{"arch.args.num_experts": 1, "trainer.val_period": 0, "trainer.save_period": 0, **extra})


def trainer_of(config, steps):
    """A trainer limited to ``steps`` batches per epoch, with its initial weights."""
    trainer = Trainer(resolve(config), torch.device("cpu"), None, None, limit_batches=steps, quiet=True)
    return trainer, copy.deepcopy(trainer.model.state_dict())


def test_ema_equals_the_average_written_out_by_hand(tmp_path, cifar10_dir):
    decay = 0.8
    trainer, initial = trainer_of(plain_config(cifar10_dir, tmp_path / "s", ema={"decay": decay}), steps=4)
    weights = []  # trained weights after every update
    trainer.callbacks.append(lambda tr, epoch, step: weights.append(copy.deepcopy(tr.model.state_dict())))
    trainer.fit()
    assert len(weights) == 4
    average = trainer.sections[0].average.state_dict()
    for key, start in initial.items():
        if not start.is_floating_point():
            assert torch.equal(average[key], weights[-1][key])  # counters are copied
            continue
        expected = start.double()
        for w in weights:
            expected = decay * expected + (1 - decay) * w[key].double()
        assert torch.allclose(average[key].double(), expected, atol=1e-6), key
        assert not torch.allclose(average[key], weights[-1][key])  # the average is not the trained model


def test_ema_warmup_uses_the_smaller_early_decay(tmp_path, cifar10_dir):
    trainer, initial = trainer_of(plain_config(cifar10_dir, tmp_path / "s", ema={"decay": 0.99, "warmup": True}), 2)
    weights = []
    trainer.callbacks.append(lambda tr, epoch, step: weights.append(copy.deepcopy(tr.model.state_dict())))
    trainer.fit()
    key = "head.weight"
    expected = initial[key].double()
    for n, w in enumerate(weights, start=1):
        d = min(0.99, (1 + n) / (10 + n))  # 2/11, then 3/12
        expected = d * expected + (1 - d) * w[key].double()
    assert torch.allclose(trainer.sections[0].average.state_dict()[key].double(), expected, atol=1e-6)


def test_ema_weights_are_validated_saved_and_evaluated(tmp_path, cifar10_dir):
    config = plain_config(cifar10_dir, tmp_path / "s", ema={"decay": 0.5}, **{"trainer.val_period": 1})
    path = write_config(tmp_path / "c.json", config)
    assert train_main(["-c", str(path), "-d", "cpu", "--quiet", "--limit_batches", "3"]) == 0
    ckpt = next((tmp_path / "s").rglob("last.pth"))
    state = load_checkpoint(ckpt)
    average = state["sections"]["ema"]["average"]
    assert int(state["sections"]["ema"]["updates"]) == 3
    model, resolved = model_from_checkpoint(state, str(ckpt))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in average.items())  # evaluation loads the average
    assert not torch.equal(average["head.weight"], state["model"]["head.weight"])
    # the logged validation accuracy is the average's (recomputed here from the checkpoint's averaged network)
    from longtail.data_loader.factory import build_data
    data = build_data(resolved, torch.device("cpu"), train=False)
    again = validation_metrics(model, data.test_loader, masks_for(state["cls_num_list"], resolved["evaluation"]))
    assert state["history"][-1]["val_accuracy"] == pytest.approx(again["val_accuracy"])


def test_ema_resumes_bit_exactly_after_ctrl_c(tmp_path, cifar10_dir):
    config = tiny_config(cifar10_dir, tmp_path / "s", epochs=2, ema={"decay": 0.9, "warmup": True},
                         **{"trainer.save_period": 0})
    path = write_config(tmp_path / "c.json", config)
    argv = ["-c", str(path), "-d", "cpu", "--quiet", "--limit_batches", "3", "--limit_val_batches", "1"]
    assert train_main([*argv, "--save_dir", str(tmp_path / "a")]) == 0
    assert train_with_interrupt([*argv, "--save_dir", str(tmp_path / "b")], at=(1, 1)) == 130
    interrupted = next((tmp_path / "b").rglob("last.pth"))
    assert train_main(["-r", str(interrupted), "-d", "cpu", "--quiet", "--limit_batches", "3",
                       "--limit_val_batches", "1"]) == 0
    a, b = (load_checkpoint(next((tmp_path / d).rglob("last.pth"))) for d in "ab")
    for key, value in a["sections"]["ema"]["average"].items():
        assert torch.equal(value, b["sections"]["ema"]["average"][key]), key
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def gradients_and_weights(config, steps=1):
    """(initial weights, gradients of the first step, weights after it) of a run."""
    trainer, initial = trainer_of(config, steps)
    seen = {}
    trainer.callbacks.append(lambda tr, epoch, step: seen.update(
        grads={n: p.grad.clone() for n, p in tr.model.named_parameters()},
        weights={n: p.detach().clone() for n, p in tr.model.named_parameters()}))
    trainer.fit()
    return initial, seen["grads"], seen["weights"]


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])
def test_clipping_equals_the_update_written_out_by_hand(tmp_path, cifar10_dir, max_norm):
    initial, grads, _ = gradients_and_weights(plain_config(cifar10_dir, tmp_path / "a"))
    _, _, clipped = gradients_and_weights(plain_config(cifar10_dir, tmp_path / "b", grad_clip={"max_norm": max_norm}))
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))
    scale = min(1.0, max_norm / (float(total) + 1e-6))
    for name, g in grads.items():
        expected = initial[name].double() - 0.1 * scale * g.double()
        assert torch.allclose(clipped[name].double(), expected, atol=1e-6), name
    assert (scale < 1.0) == (max_norm < 1.0)  # the small bound clips, the large one does not


def test_clipping_logs_the_mean_gradient_norm_and_rejects_bad_values(tmp_path, cifar10_dir):
    trainer, _ = trainer_of(plain_config(cifar10_dir, tmp_path / "s", grad_clip={"max_norm": 0.5}), steps=2)
    metrics = trainer.fit()
    assert metrics["grad_norm"] > 0
    with pytest.raises(ConfigError, match="grad_clip.max_norm"):
        resolve(plain_config(cifar10_dir, tmp_path / "s", grad_clip={"max_norm": 0}))
    with pytest.raises(ConfigError, match="ema.decay"):
        resolve(plain_config(cifar10_dir, tmp_path / "s", ema={"decay": 1.0}))
