"""LWS (learnable weight scaling): per-class scales on frozen stage-1 logits, as a plugin model extension."""
from pathlib import Path

import pytest
import torch

from longtail.methods.lws import ClassScales
from longtail.registry import MODELS
from longtail.cli.evaluate import uniform_main
from longtail.cli.train import main as train_main
from longtail.core.build import build_model, resolve
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.config import load_config
from longtail.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


def test_class_scales_multiply_every_experts_logits_by_hand():
    scales = ClassScales(3)
    with torch.no_grad():
        scales.scale.copy_(torch.tensor([2.0, 0.5, -1.0]))
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 4.0, -2.0]]])  # (B=1, E=2, C=3)
    out = scales.extend(None, None, {"logits": logits, "output": logits.mean(dim=1), "feat": torch.zeros(1, 2, 4)})
    assert out["logits"].tolist() == [[[2.0, 1.0, -3.0], [0.0, 2.0, 2.0]]]
    assert out["output"].tolist() == [[1.0, 1.5, -0.5]]  # the mean of the scaled experts
    assert "feat" in out


def test_lws_extension_is_built_from_the_arch_block_and_validated():
    config = resolve(load_config(ROOT / "configs/fmnist_ir100/lws.json"))
    model = build_model(config, 10, 1)
    assert [n for n, _ in model.named_parameters() if n.startswith("lws.")] == ["lws.scale"]
    assert torch.equal(model.lws.scale, torch.ones(10))
    config["arch"]["lws"] = {"init": 1.0, "per_expert": True}
    with pytest.raises(ConfigError, match="arch.lws must be an object with at most the key 'init'"):
        build_model(config, 10, 1)
    plain = MODELS.build({"type": "resnet_cifar", "args": {"depth": 8}}, "arch", num_classes=10)
    assert not hasattr(plain, "lws")


@pytest.fixture(scope="module")
def lws_runs(fmnist_dir, tmp_path_factory):
    """Stage 1 (configs/fmnist_ir100/ce_linear.json) and the shipped LWS config on it, shrunk to the tiny fixture."""
    save = tmp_path_factory.mktemp("lws")
    common = ["--data_dir", str(fmnist_dir), "--save_dir", str(save), "--epochs", "1", "-d", "cpu", "--quiet",
              "--batch_size", "32", "--set", "data_loader.args.imb_factor=0.1", "--set", "trainer.tensorboard=false"]
    assert train_main(["-c", str(ROOT / "configs/fmnist_ir100/ce_linear.json"), *common, "--limit_batches", "3",
                       "--name", "fmnist_ir100_ce_linear"]) == 0
    stage1 = sorted(save.glob("fmnist_ir100_ce_linear/seed*/last.pth"))[-1]
    assert train_main(["-c", str(ROOT / "configs/fmnist_ir100/lws.json"), *common, "--epochs", "2",
                       "--set", f"init_from.checkpoint={stage1}", "--set", "optimizer.args.lr=0.5",
                       "--name", "fmnist_ir100_lws"]) == 0
    return stage1, sorted(save.glob("fmnist_ir100_lws/seed*/last.pth"))[-1]


def test_lws_learns_only_the_class_scales(lws_runs):
    stage1, lws = (load_checkpoint(p) for p in lws_runs)
    assert set(lws["model"]) - set(stage1["model"]) == {"lws.scale"}
    for key, value in stage1["model"].items():  # weights and BN running statistics of stage 1 untouched
        assert torch.equal(lws["model"][key], value), key
    scale = lws["model"]["lws.scale"]
    assert not torch.equal(scale, torch.ones_like(scale))


def test_lws_checkpoint_is_evaluated_like_any_other(lws_runs, capsys):
    assert uniform_main(["-r", str(lws_runs[1]), "-d", "cpu"]) == 0
    assert "seed1" in capsys.readouterr().out
