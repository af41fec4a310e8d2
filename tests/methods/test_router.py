"""RIDE router (decision formula, early exit, threshold), teacher wrapper, and the MAC cost model by hand."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longtail.core.cost import ExpertCost, expert_cost
from longtail.methods.ride import RouterCost, TeacherStudent, attach_router, experts_used_percentages
from longtail.registry import MODELS
from longtail.cli.flops import main as flops_main
from longtail.utils.flops import count_macs
from longtail.utils.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROUTER = {"type": "ride", "args": {"top_k": 5, "hidden_dim": 16}}


def tiny_resnet(experts: int):
    return MODELS.build({"type": "resnet_cifar", "args": {"depth": 8, "stem_width": 4, "num_experts": experts}}, "arch",
                        num_classes=10)


def with_router(model, block=ROUTER):
    """The model with an arch.router extension attached (as the builder does)."""
    model.add_extension("router", attach_router(model, block))
    return model


def tiny_router_model(seed: int = 0):
    torch.manual_seed(seed)
    return with_router(tiny_resnet(3))


def test_router_logits_follow_the_decision_formula():
    model = tiny_router_model()
    x = torch.randn(4, 3, 32, 32)
    out = model.train()(x)
    router = model.router
    for k in range(2):
        mean = out["logits"][:, :k + 1].mean(dim=1)
        hidden = F.relu(F.normalize(out["feat"][:, k], dim=1) @ router.hidden[k].weight.T + router.hidden[k].bias)
        top = mean.sort(dim=1, descending=True).values[:, :5]
        u = torch.cat([top, hidden], dim=1) @ router.output.weight[0] + router.output.bias
        assert torch.allclose(out["router_logits"][:, k], u, atol=1e-5)


def first_decision(model, x):
    """sigmoid(u_0) per sample, computed from expert 0 in eval mode."""
    with torch.no_grad():
        feat = model.expert_features(model.trunk(x), 0)
        logits = model.head.forward_expert(feat, 0)  # as early exit computes it (bit-identical ties)
        return torch.sigmoid(model.router.decision(0, feat, logits))


def test_early_exit_threshold_controls_experts_used():
    model = tiny_router_model().eval()
    torch.manual_seed(0)
    plain = tiny_resnet(3).eval()  # the same backbone weights without the router
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        all_experts = plain(x)
        means = []
        for threshold in (0.0, 0.25, 0.5, 0.75, 1.0):
            model.router.threshold = threshold
            means.append(model(x)["experts_used"].double().mean().item())
        model.router.threshold = 0.0
        out0 = model(x)
        model.router.threshold = 1.0
        out1 = model(x)
    assert means[0] == 3 and means[-1] == 1
    assert all(a >= b for a, b in zip(means, means[1:]))
    assert torch.allclose(out0["output"], all_experts["output"], atol=1e-5)
    assert torch.allclose(out1["output"], all_experts["logits"][:, 0], atol=1e-5)
    assert torch.allclose(out1["logits"].mean(dim=1), out1["output"], atol=1e-6)  # skipped slots hold the used mean
    # a threshold at the median of sigmoid(u_0) stops exactly the samples at or below it after expert 0
    probs = first_decision(model, x)
    model.router.threshold = float(probs.median())
    with torch.no_grad():
        used = model(x)["experts_used"]
    assert torch.equal(used == 1, probs <= model.router.threshold)
    assert 0 < int((used == 1).sum()) < 16


def test_router_config_errors():
    with pytest.raises(ConfigError, match="at least 2 experts"):
        with_router(tiny_resnet(1))
    three = tiny_resnet(3)
    with pytest.raises(ConfigError, match="top_k must be in 1..10"):
        attach_router(three, {"type": "ride", "args": {"top_k": 30}})
    with pytest.raises(ConfigError, match="router_threshold"):
        attach_router(three, {"args": {"threshold": 0.7}})


def test_teacher_stays_frozen_in_eval_mode():
    torch.manual_seed(0)
    teacher = tiny_resnet(2).requires_grad_(False).eval()
    student = tiny_resnet(1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    pair = TeacherStudent(student, teacher).train()
    x = torch.randn(4, 3, 32, 32)
    out = pair(x)
    out["logits"].sum().backward()
    assert not teacher.training and student.training
    assert torch.allclose(out["teacher_output"], teacher(x)["output"])
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN running stats untouched
    assert not out["teacher_output"].requires_grad


# hand-counted MACs of resnet_cifar depth 8, stem width 4, 3 experts, 10 classes, 32x32 input
TRUNK = 32 * 32 * 4 * 3 * 9 + 2 * 32 * 32 * 4 * 4 * 9                   # stem conv + stage-1 block
BRANCH = 16 * 16 * 8 * (4 + 8) * 9 + 8 * 8 * 16 * (8 + 16) * 9           # stage 2 + stage 3 of one expert
HEADS = 3 * 16 * 10                                                       # cosine heads, D = 16
DECISION = 16 * 16 + (16 + 5)                                             # h_k and g


def test_cost_model_matches_hand_counts():
    model = tiny_router_model()
    parts = expert_cost(model, (3, 32, 32))
    cost = RouterCost(parts, model.router.decision_macs(model))
    assert (parts.trunk, parts.branch, parts.heads, cost.decision) == (TRUNK, BRANCH, HEADS, DECISION)
    assert count_macs(tiny_resnet(3), (3, 32, 32)) == TRUNK + 3 * BRANCH + HEADS  # the parts add up to the forward
    one = TRUNK + BRANCH + HEADS / 3 + DECISION
    three = TRUNK + 3 * BRANCH + HEADS + 2 * DECISION
    assert cost.with_experts(1) == pytest.approx(one) and cost.with_experts(3) == pytest.approx(three)
    assert cost.expected([50, 0, 50]) == pytest.approx((one + three) / 2)
    with pytest.raises(ValueError, match="sum to 100"):
        cost.expected([50, 0, 40])
    assert experts_used_percentages(torch.tensor([1, 3, 3, 2]), 3) == [25.0, 25.0, 50.0]
    assert ExpertCost(2, 10, 5, 4).with_experts(2) == 24  # no router: no decision cost


def test_flops_cli_prints_split_and_expected_cost(capsys):
    router_config = str(CONFIGS / "cifar100_ir100/ride_router.json")
    assert flops_main(["-c", router_config, "--experts_used", "40.99,9.47,49.54"]) == 0
    out = capsys.readouterr().out
    # 783,856 parameters for 3 reduced experts (docs/methods.md); router: 2 x (48*16 + 16) + (16 + 30 + 1) = 1,615
    assert "parameters: 785,471 (router: 1,615)" in out
    assert "shared trunk" in out and "one expert branch" in out and "one router decision" in out
    assert "expected MACs/image with 40.99 / 9.47 / 49.54" in out
    assert flops_main(["-c", str(CONFIGS / "cifar100_ir100/ce.json")]) == 0
    assert "parameters: 470,004" in capsys.readouterr().out  # 469,904 (cosine head) + 100 linear-head biases
    assert flops_main(["-c", router_config, "--experts_used", "40,10"]) == 2
    assert "one percentage per expert count" in capsys.readouterr().err
