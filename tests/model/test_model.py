"""Backbones and the multi-expert wrapper: parameter counts, batched == looped experts, gradients everywhere."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail.model.layers import ExpertHead
from longtail.registry import MODELS
from longtail.model.resnet_cifar import option_a_shortcut
from longtail.utils.flops import count_macs, count_parameters


@pytest.mark.parametrize("classes,experts,reduce,params", [
    (10, 1, False, 464_144), (100, 1, False, 469_904), (100, 1, True, 277_168),
    (100, 3, False, 1_362_064), (100, 3, True, 783_856),
])
def test_resnet32_parameter_counts_match_spec(classes, experts, reduce, params):
    model = MODELS.build({"type": "resnet32", "args": {"num_experts": experts, "reduce_dimension": reduce}}, "arch", num_classes=classes)
    assert count_parameters(model) == params


def test_macs_single_resnet32():
    model = MODELS.build("resnet32", "arch", num_classes=100)
    assert abs(count_macs(model, (3, 32, 32)) / 1e9 - 0.07) < 0.005  # SADE README: 0.07 GMACs


# Narrower late stages keep the deepest backbones cheap on CPU (the full widths are checked by parameter counts).
SMOKE_ARGS = {"resnet152": {"layer3_output_dim": 32, "layer4_output_dim": 32},
              "resnext152": {"layer3_output_dim": 32, "layer4_output_dim": 32}}
# Models that are not plain multi-expert backbones: (config args, code kwargs, number of experts in "logits").
TINY_CLIP = str(Path(__file__).resolve().parents[1] / "fixtures" / "open_clip" / "tiny-clip.json")
SPECIAL_MODELS = {
    "timm": ({"model_name": "test_vit", "pretrained": False, "img_size": 32, "num_experts": 2}, {}, 2),
    "open_clip": ({"model_name": "tiny-clip", "model_config_file": TINY_CLIP, "num_experts": 2}, {}, 2),
    "class_balanced_experts": ({"expert_arch": {"type": "resnet_cifar", "args": {"depth": 8, "stem_width": 4, "use_norm": False}},
                                "many_threshold": 50, "few_threshold": 10}, {"cls_num_list": [90, 80, 40, 30, 20, 5, 3]}, 1),
}


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_forward_backward(name):
    args, code, experts = SPECIAL_MODELS.get(name, ({"num_experts": 2, **SMOKE_ARGS.get(name, {})}, {}, 2))
    model = MODELS.build({"type": name, "args": args}, "arch", num_classes=7, in_channels=3, **code)
    out = model(torch.randn(3, 3, 32, 32))
    assert out["logits"].shape == (3, experts, 7) and out["output"].shape == (3, 7)
    assert torch.allclose(out["output"], out["logits"].mean(1))
    out["output"].sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # frozen parts by design excluded
    missing = [n for n, p in trainable if p.grad is None]
    assert trainable and not missing and all(torch.isfinite(p.grad).all() for _, p in trainable)


def _pair(num_experts=3):
    torch.manual_seed(0)
    looped = MODELS.build({"type": "resnet_cifar", "args": {"depth": 14, "stem_width": 8, "num_experts": num_experts}},
                          "arch", num_classes=10)
    batched = copy.deepcopy(looped)
    batched.batched_experts = True
    return looped, batched


@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_experts_equal_looped_experts(channels_last):
    looped, batched = _pair()
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    if channels_last:
        looped, batched = looped.to(memory_format=torch.channels_last), batched.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for model in (looped, batched):
        model.train()
        F.cross_entropy(model(x)["logits"].flatten(0, 1), y.repeat_interleave(3)).backward()
    for (name, p1), (_, p2) in zip(looped.named_parameters(), batched.named_parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-4, rtol=1e-3), name
    for (name, b1), (_, b2) in zip(looped.named_buffers(), batched.named_buffers()):
        assert torch.allclose(b1.float(), b2.float(), atol=1e-5), name  # per-expert BN running stats
    looped.eval(), batched.eval()
    with torch.no_grad():
        assert torch.allclose(looped(x)["logits"], batched(x)["logits"], atol=1e-4)


def test_experts_are_independent():
    looped, _ = _pair()
    looped.train()
    x = torch.randn(4, 3, 32, 32)
    looped(x)["logits"][:, 1].sum().backward()
    conv = looped.branch[0][0].conv1  # first per-expert conv, weight (E*out, in, k, k)
    out = conv.out_channels
    assert conv.weight.grad[:out].abs().sum() == 0 and conv.weight.grad[2 * out:].abs().sum() == 0
    assert conv.weight.grad[out:2 * out].abs().sum() > 0


def test_cosine_head_matches_formula():
    head = ExpertHead(2, 4, 3, cosine=True, scale=30.0)
    feats = torch.randn(5, 2, 4)
    out = head(feats)
    for e in range(2):
        w = head.weight[e]
        expected = 30 * (feats[:, e] / feats[:, e].norm(dim=1, keepdim=True)) @ (w / w.norm(dim=0, keepdim=True))
        assert torch.allclose(out[:, e], expected, atol=1e-5)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(2, 3), atol=1e-6)  # unit-norm class columns at init


def test_option_a_shortcut_padding_placement():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float).view(2, 4, 4, 4)
    out = option_a_shortcut(x, 8, 1)
    assert out.shape == (2, 8, 2, 2)
    assert (out[:, :2] == 0).all() and (out[:, 6:] == 0).all()
    assert torch.equal(out[:, 2:6], x[:, :, ::2, ::2])
