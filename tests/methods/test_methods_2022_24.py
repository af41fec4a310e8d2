"""NCL, MDCS, BCL and SHIKE end to end on tiny Fashion-MNIST files, and the pieces they added: the projection
extension (features and class prototypes), independent experts, SHIKE's backbone cost and schedule, the third LR step."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, train_with_interrupt, write_config
from longtail.cli.flops import main as flops_main
from longtail.cli.train import main as train_main
from longtail.core.build import build_model
from longtail.core.cost import expert_cost
from longtail.core.optim import warmup_step_factor
from longtail.methods.shike import cosine_after_warmup_factor
from longtail.registry import MODELS
from longtail.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official")
ROOT = Path(__file__).resolve().parents[2]
CROP = {"type": "standard", "args": {"padding": 2, "flip": True}}
SIM = {"type": "sade_view", "args": {"padding": 2, "resized_crop_scale": [0.2, 1.0], "blur_p": 0.0}}
METHODS = {  # name -> overrides of tiny_config (ResNet-8, width 4, tiny Fashion-MNIST, 3 experts unless changed)
    "ncl": {"loss": {"type": "ncl", "args": {"hcm_n": 3}}, "arch.args.independent_experts": True,
            "arch.args.use_norm": False},
    "mdcs": {"loss": {"type": "mdcs", "args": {"warmup": 2}},
             "data_loader.args.augment": {"type": "multi_view", "args": {"views": [
                 CROP, {"type": "autoaugment", "args": {"padding": 2, "cutout": 8}}]}}},
    "bcl": {"loss": {"type": "bcl", "args": {"temperature": 0.1}}, "arch.args.num_experts": 1,
            "arch.projection": {"dim": 8}, "data_loader.args.augment": {"type": "multi_view", "args": {
                "views": [{"type": "autoaugment", "args": {"padding": 2}}, SIM, SIM]}}},
    "shike": {"loss": {"type": "shike", "args": {}}, "arch": {"type": "resnet_cifar_dkf", "args": {
        "depth": 8, "stem_width": 4, "num_experts": 3}},
              "lr_scheduler": {"type": "cosine_after_warmup", "args": {"T_max": 2, "warmup_epoch": 1}}},
}


def method_config(fmnist_dir, save_dir, method, epochs=1, **overrides):
    return tiny_config(fmnist_dir, save_dir, dataset="fmnist_lt", epochs=epochs, **{
        "name": f"tiny_{method}", "combiner": {"type": "default"}, **METHODS[method], **overrides})


def train(config, tmp_path, *flags):
    """Train (2 batches per epoch unless flags say otherwise); returns (exit code, newest run directory)."""
    path = write_config(tmp_path / f"{config['name']}.json", config)
    code = train_main(["-c", str(path), "-d", "cpu", "--quiet", *flags])
    runs = sorted((Path(config["trainer"]["save_dir"]) / config["name"]).glob("seed*"))
    return code, (runs[-1] if runs else None)


@pytest.mark.parametrize("name", list(METHODS))
def test_method_trains_and_validates(fmnist_dir, tmp_path, name):
    code, run = train(method_config(fmnist_dir, tmp_path, name), tmp_path, "--limit_batches", "2")
    assert code == 0
    history = list(csv.DictReader((run / "history.csv").open()))
    assert len(history) == 1 and float(history[0]["loss"]) > 0 and 0 <= float(history[0]["val_accuracy"]) <= 100


def test_shike_second_stage_retrains_only_the_classifiers(fmnist_dir, tmp_path):
    code, stage1 = train(method_config(fmnist_dir, tmp_path, "shike"), tmp_path, "--limit_batches", "2")
    assert code == 0
    stage2 = method_config(fmnist_dir, tmp_path, "shike", name="tiny_shike_rt", loss={"type": "balanced_softmax", "args": {}},
                           init_from={"checkpoint": str(stage1 / "last.pth"), "exclude": ["head."],
                                      "freeze": ["trunk.", "branch."]})
    code, run = train(stage2, tmp_path, "--limit_batches", "2")
    assert code == 0
    before, after = load_checkpoint(stage1 / "last.pth")["model"], load_checkpoint(run / "last.pth")["model"]
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["head.weight"]  # features and BN statistics frozen, the classifiers re-initialised and trained


@pytest.mark.slow
def test_multi_view_training_resumes_bit_exactly(fmnist_dir, tmp_path):
    """MDCS (two views, AutoAugment): Ctrl-C in epoch 2, resume, same final weights as an uninterrupted run."""
    config = write_config(tmp_path / "c.json", method_config(fmnist_dir, tmp_path / "a", "mdcs", epochs=2))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "4"]) == 0
    reference = next((tmp_path / "a" / "tiny_mdcs").glob("seed*")) / "last.pth"
    argv = ["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "4", "--save_dir", str(tmp_path / "b")]
    assert train_with_interrupt(argv, (2, 1)) == 130
    interrupted = next((tmp_path / "b" / "tiny_mdcs").glob("seed*")) / "last.pth"
    assert train_main(["-r", str(interrupted), "-d", "cpu", "--quiet", "--limit_batches", "4"]) == 0
    resumed, expected = load_checkpoint(interrupted)["model"], load_checkpoint(reference)["model"]
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)


# ------------------------------------------------------------------------------------------- projection extension
def projected_model(experts: int = 2, cosine: bool = True):
    config = {"arch": {"type": "resnet_cifar", "args": {"depth": 8, "stem_width": 4, "num_experts": experts,
                                                        "use_norm": cosine}, "projection": {"dim": 5}}}
    torch.manual_seed(0)
    return build_model(config, 7, 1, [5] * 7)


@pytest.mark.parametrize("cosine", [True, False])
def test_projection_outputs_in_training_only(cosine):
    model = projected_model(cosine=cosine)
    out = model.train()(torch.randn(6, 1, 28, 28))
    assert out["projection"].shape == (6, 2, 5) and out["prototypes"].shape == (2, 7, 5)
    assert torch.allclose(out["projection"].norm(dim=-1), torch.ones(6, 2), atol=1e-5)
    assert torch.allclose(out["prototypes"].norm(dim=-1), torch.ones(2, 7), atol=1e-5)
    out["prototypes"][1].sum().backward()  # class-complement: the prototypes move with expert 1's classifier only
    grad = model.head.weight.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0
    assert set(model.eval()(torch.randn(2, 1, 28, 28))) == {"output", "logits", "feat"}


def test_projection_prototypes_follow_class_rows_of_the_classifier():
    """Prototype c of expert e is h_e(row c of W_e) (BN statistics over the C rows do not depend on their order):
    permuting the classes of the classifier permutes the prototypes the same way."""
    model = projected_model(experts=1).train()
    x = torch.randn(4, 1, 28, 28)
    perm = [3, 0, 6, 1, 5, 2, 4]
    before = model(x)["prototypes"][0]
    with torch.no_grad():
        model.head.weight[:] = model.head.weight[:, :, perm]
    assert torch.allclose(model(x)["prototypes"][0], before[perm], atol=1e-5)


def test_flops_report_lists_projection_and_independent_experts(capsys):
    assert flops_main(["-c", str(ROOT / "configs/fmnist_ir100/bcl.json")]) == 0
    assert "projection head (training only" in capsys.readouterr().out
    assert flops_main(["-c", str(ROOT / "configs/fmnist_ir100/ncl.json")]) == 0
    out = capsys.readouterr().out
    assert "shared trunk:                0.0000 M" in out


# ---------------------------------------------------------------------------------------------------- backbones
def test_independent_experts_share_nothing_and_batched_equals_looped():
    torch.manual_seed(0)
    model = MODELS.build({"type": "resnet_cifar", "args": {"depth": 8, "stem_width": 4, "num_experts": 3,
                                                           "independent_experts": True}}, "arch", num_classes=5,
                         in_channels=1)
    assert not list(model.trunk.parameters())
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    looped = model(x)["logits"]
    model.batched_experts = True
    assert torch.allclose(looped, model(x)["logits"], atol=1e-5)
    model.batched_experts = False
    model.train()
    model(x)["logits"][:, 1].sum().backward()
    stem = model.branch[0].conv.weight.grad.view(3, 4, -1)  # the stem is per expert: only expert 1's slice learns
    assert stem[1].abs().sum() > 0 and stem[0].abs().sum() == 0 and stem[2].abs().sum() == 0


def test_dkf_backbone_cost_counts_the_shallow_expert():
    """Expert branch cost of resnet_cifar_dkf = its stage 3 + its shallow expert (expert 0: two strided 3x3 convs
    on the 32x32 stage-1 map, 16->32->64 channels): counted by hand below."""
    model = MODELS.build({"type": "resnet_cifar_dkf", "args": {"depth": 8, "num_experts": 3}}, "arch", num_classes=10)
    cost = expert_cost(model, (3, 32, 32))
    stage3 = 8 * 8 * 64 * (32 * 9) + 8 * 8 * 64 * (64 * 9) + 8 * 8 * 64 * 32  # conv1 (stride 2), conv2, 1x1 projection
    shallow = 16 * 16 * 32 * (16 * 9) + 8 * 8 * 64 * (32 * 9)
    assert cost.branch == stage3 + shallow and cost.num_experts == 3


# ---------------------------------------------------------------------------------------------------- schedules
def test_shike_schedule_equals_the_official_warmup_cosine():
    """SHIKE's CosineAnnealingLRWarmup, stage 1 (base 0.05, warmup_lr 0.15, 5 warm-up epochs, T_max 180): 0.025,
    0.05, ..., 0.125, then 0.15 (1 + cos(pi (t - 5) / 175)) / 2; stage 2 (base 0.05, warmup_lr 0.1, T_max 20): 0.0375,
    0.05, ..., 0.0875, then 0.1 (1 + cos(pi (t - 5) / 15)) / 2 -- as factors of the peak lr."""
    import math
    stage1 = [0.15 * cosine_after_warmup_factor(t, 180, 5, 0.0, 0.0) for t in (0, 1, 4, 5, 90, 179)]
    assert stage1 == pytest.approx([0.025, 0.05, 0.125, 0.15, 0.15 * (1 + math.cos(math.pi * 85 / 175)) / 2,
                                    0.15 * (1 + math.cos(math.pi * 174 / 175)) / 2])
    stage2 = [0.1 * cosine_after_warmup_factor(t, 20, 5, 0.25, 0.0) for t in (0, 1, 2, 3, 4, 5, 12)]
    assert stage2 == pytest.approx([0.0375, 0.05, 0.0625, 0.075, 0.0875, 0.1, 0.1 * (1 + math.cos(math.pi * 7 / 15)) / 2])


def test_third_lr_step():
    """MDCS's CustomLR: x0.1 after step1, x0.01 after step2, x0.001 after step3 (0-based scheduler epochs)."""
    factors = [warmup_step_factor(e, 200, 320, 0.1, 20, step3=380) for e in (0, 19, 199, 200, 320, 380, 399)]
    assert factors == pytest.approx([1 / 20, 1.0, 1.0, 0.1, 0.01, 0.001, 0.001])
    assert warmup_step_factor(399, 200, 320, 0.1, 20) == pytest.approx(0.01)  # without step3: two steps
