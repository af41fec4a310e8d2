"""Long-tail baseline and RIDE losses against hand / NumPy computations on small tensors."""
import math

import numpy as np
import pytest
import torch

from longtail.model.losses.base import effective_number_weights, ldam_margins
from longtail.model.losses.ride import router_targets
from longtail.registry import LOSSES

COUNTS = [60, 30, 10]
LOGITS = torch.tensor([[[1.0, 2.0, 0.5], [0.2, -1.0, 0.3], [2.0, 0.0, -0.5]],
                       [[0.1, 0.1, 3.0], [1.5, 0.5, 0.0], [-1.0, 2.0, 1.0]]])  # (B=2, E=3, C=3)
TARGET = torch.tensor([0, 2])
W_BETA_HALF = [63 / 47, 42 / 47, 36 / 47]  # counts 1, 2, 3, beta 0.5: w = 1, 2/3, 4/7, times 3 / (47/21)


def build(block, counts=COUNTS, experts=3):
    return LOSSES.build(block, "loss", cls_num_list=counts, num_experts=experts)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_ce(z, y, weight=None):
    """Batch CE of (B, C) logits; with weights the weighted mean sum w_y CE / sum w_y."""
    losses = -np_log_softmax(z)[np.arange(len(y)), y]
    if weight is None:
        return losses.mean()
    w = weight[y]
    return (w * losses).sum() / w.sum()


def np_kl(p_logits, q_logits, t):
    """KL(softmax(p/t) || softmax(q/t)) summed over classes, mean over the batch."""
    log_p, log_q = np_log_softmax(p_logits / t), np_log_softmax(q_logits / t)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean()


def test_ldam_margins_and_effective_number_weights_by_hand():
    assert ldam_margins([100, 16, 1], max_m=0.5).tolist() == pytest.approx([0.5 * 100 ** -0.25, 0.25, 0.5], rel=1e-6)
    assert effective_number_weights([1, 2, 3], beta=0.5).tolist() == pytest.approx(W_BETA_HALF, rel=1e-6)
    w = effective_number_weights([5000, 50, 5], beta=0.9999)
    assert float(w.sum()) == pytest.approx(3.0, rel=1e-6) and w[0] < w[1] < w[2]


def test_ce_reweight_is_weighted_mean_per_expert():
    out = build({"type": "ce_reweight", "args": {"beta": 0.5}}, counts=[1, 2, 3])(LOGITS, TARGET)
    w = W_BETA_HALF
    for e in range(3):
        rows = LOGITS[:, e].tolist()
        ces = [-rows[b][TARGET[b]] + math.log(sum(math.exp(v) for v in rows[b])) for b in range(2)]
        expected = (w[0] * ces[0] + w[2] * ces[1]) / (w[0] + w[2])
        assert out.per_expert[e].item() == pytest.approx(expected, rel=1e-5)
    assert out.total.item() == pytest.approx(out.per_expert.mean().item(), rel=1e-6)


def test_focal_loss_by_hand():
    single = LOGITS[:, :1]
    out = build({"type": "focal", "args": {"gamma": 2.0}}, experts=1)(single, TARGET)
    expected = 0.0
    for b in range(2):
        row = single[b, 0].tolist()
        p = math.exp(row[TARGET[b]]) / sum(math.exp(v) for v in row)
        expected += (1 - p) ** 2 * -math.log(p) / 2
    assert out.total.item() == pytest.approx(expected, rel=1e-5)
    ce = build({"type": "focal", "args": {"gamma": 0.0}}, experts=1)(single, TARGET).total.item()
    assert ce == pytest.approx(torch.nn.functional.cross_entropy(single[:, 0], TARGET).item(), rel=1e-6)
    weighted = build({"type": "focal", "args": {"gamma": 2.0, "reweight": True, "beta": 0.5}}, [1, 2, 3], 1)
    w = W_BETA_HALF
    p = [math.exp(single[b, 0, TARGET[b]].item()) / sum(math.exp(v) for v in single[b, 0].tolist()) for b in range(2)]
    expected_w = sum(w[TARGET[b]] * (1 - p[b]) ** 2 * -math.log(p[b]) for b in range(2)) / 2
    assert weighted(single, TARGET).total.item() == pytest.approx(expected_w, rel=1e-5)


def test_ldam_drw_margin_and_deferred_weights():
    counts = [100, 16, 1]
    loss = build({"type": "ldam_drw", "args": {"max_m": 0.5, "s": 10.0, "reweight_epoch": 2, "beta": 0.5}}, counts, 1)
    z, y = LOGITS[:, 0].numpy().astype(np.float64), TARGET.numpy()
    margins = np.array([0.5 * 100 ** -0.25, 0.25, 0.5])
    shifted = z.copy()
    shifted[np.arange(2), y] -= 10.0 * margins[y]
    weights = (0.5 / (1 - 0.5 ** np.array(counts, dtype=float)))
    weights = weights * 3 / weights.sum()
    for epoch, weight in ((1, None), (2, None), (3, weights)):
        loss.on_epoch_start(epoch)
        assert loss(LOGITS[:, :1], TARGET).total.item() == pytest.approx(np_ce(shifted, y, weight), rel=1e-5), epoch
    never = build({"type": "ldam_drw", "args": {"s": 10.0}}, counts, 1)
    never.on_epoch_start(500)
    assert never(LOGITS[:, :1], TARGET).total.item() == pytest.approx(np_ce(shifted, y), rel=1e-5)


def np_ride(z, y, counts, lam, reweighting, t0=1.0, r=0.05, s=30.0, max_m=0.5, beta=0.9999):
    """RIDE loss (METHODS.md §3.6) in NumPy: per-expert terms."""
    counts = np.array(counts, dtype=float)
    m = counts ** -0.25
    m = m * max_m / m.max()
    w = (1 - beta) / (1 - beta ** counts)
    w = w * len(counts) / w.sum()
    v = len(counts) * counts / counts.sum() * r + 1 - r
    v = v / v.max()
    t = t0 * v if reweighting else t0
    t_mean = np.mean(t)
    zbar = z.mean(axis=1)
    terms = []
    for e in range(z.shape[1]):
        shifted = z[:, e].copy()
        shifted[np.arange(len(y)), y] -= s * m[y]
        terms.append(np_ce(shifted, y, w if reweighting else None) + lam * t_mean ** 2 * np_kl(zbar, z[:, e], t))
    return np.array(terms)


def test_ride_loss_matches_numpy_before_and_after_reweighting():
    args = {"diversity_factor": -0.45, "reweight_epoch": 1, "reweight_factor": 0.05, "diversity_temperature": 1.5}
    loss = build({"type": "ride", "args": args})
    z, y = LOGITS.numpy().astype(np.float64), TARGET.numpy()
    for epoch, reweighting in ((1, False), (2, True)):
        loss.on_epoch_start(epoch)
        out = loss(LOGITS, TARGET)
        expected = np_ride(z, y, COUNTS, -0.45, reweighting, t0=1.5)
        assert out.per_expert.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
        assert out.total.item() == pytest.approx(expected.sum(), rel=1e-5)  # a sum over experts, not a mean


def test_ride_diversity_term_alone_and_no_zero_factor_quirk():
    """The diversity part is lambda * T^2 * KL(ensemble || expert); with lambda = 0 the CE uses each expert's logits."""
    z, y = LOGITS.numpy().astype(np.float64), TARGET.numpy()
    with_div = build({"type": "ride", "args": {"diversity_factor": -0.2}})(LOGITS, TARGET).total.item()
    without = build({"type": "ride", "args": {"diversity_factor": 0.0}})(LOGITS, TARGET).total.item()
    kl = sum(np_kl(z.mean(axis=1), z[:, e], 1.0) for e in range(3))
    assert with_div - without == pytest.approx(-0.2 * kl, rel=1e-4)
    margins = np.array(COUNTS, dtype=float) ** -0.25
    margins = 0.5 * margins / margins.max()
    own = 0.0
    for e in range(3):
        shifted = z[:, e].copy()
        shifted[np.arange(2), y] -= 30 * margins[y]
        own += np_ce(shifted, y)
    assert without == pytest.approx(own, rel=1e-5)


def test_ride_diversity_target_is_detached():
    """Gradient of the KL term reaches each expert only through its own log-softmax (ensemble side detached)."""
    logits = LOGITS.clone().requires_grad_(True)
    loss = build({"type": "ride", "args": {"diversity_factor": 1.0, "base_loss_factor": 0.0}})
    loss(logits, TARGET).total.backward()
    p = torch.softmax(LOGITS.mean(dim=1), dim=-1)  # d/dz_e KL(p || softmax(z_e)) / B = (softmax(z_e) - p) / B
    expected = (torch.softmax(LOGITS, dim=-1) - p[:, None, :]) / 2
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_ride_distill_adds_ensemble_kl_once():
    z, y = LOGITS.numpy().astype(np.float64), TARGET.numpy()
    teacher = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    args = {"diversity_factor": -0.45, "distill_temperature": 1.5}
    out = build({"type": "ride_distill", "args": args})(LOGITS, TARGET, teacher_output=teacher)
    ride = np_ride(z, y, COUNTS, -0.45, False).sum()
    distill = 1.5 ** 2 * np_kl(teacher.numpy().astype(np.float64), z.mean(axis=1), 1.5)
    assert out.total.item() == pytest.approx(ride + distill, rel=1e-5)
    with pytest.raises(ValueError, match="class count"):
        build({"type": "ride_distill", "args": args})(LOGITS, TARGET, teacher_output=teacher[:, :2])


def test_ride_distill_scale_reproduces_the_reference_expert_loop():
    """scale_by_num_experts: the reference adds (full RIDE loss + distillation) once per expert inside its loop."""
    z, y = LOGITS.numpy().astype(np.float64), TARGET.numpy()
    teacher = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    args = {"diversity_factor": -0.45, "distill_temperature": 1.5, "scale_by_num_experts": True}
    out = build({"type": "ride_distill", "args": args})(LOGITS, TARGET, teacher_output=teacher)
    reference = 0.0
    for _ in range(z.shape[1]):  # the reference's loop body, once per expert
        reference += np_ride(z, y, COUNTS, -0.45, False).sum()
        reference += 1.5 ** 2 * np_kl(teacher.numpy().astype(np.float64), z.mean(axis=1), 1.5)
    assert out.total.item() == pytest.approx(reference, rel=1e-5)
    unscaled = build({"type": "ride_distill", "args": {**args, "scale_by_num_experts": False}})(
        LOGITS, TARGET, teacher_output=teacher)
    assert out.total.item() == pytest.approx(3 * unscaled.total.item(), rel=1e-6)


# increments z_j[0] - z_j[1] of three experts (label 0) chosen so the prefix-correctness patterns are known
ROUTER_DELTAS = [[1, -2, 0], [-1, 2, 0], [-1, 0, 2], [-1, 0, 0], [1, -2, 2], [-1, 2, -2]]
#  prefix correct:  TFF          FTT         FFT         FFF         TFT         FTF
ROUTER_TARGETS = [[0, 0], [1, 0], [1, 1], [0, 0], [0, 1], [1, 0]]


def router_example():
    deltas = torch.tensor(ROUTER_DELTAS, dtype=torch.float)
    logits = torch.stack([deltas, torch.zeros_like(deltas)], dim=-1)  # (B=6, E=3, C=2)
    return logits, torch.zeros(6, dtype=torch.long)


def test_router_targets_on_constructed_example():
    logits, target = router_example()
    assert router_targets(logits, target).tolist() == ROUTER_TARGETS


def test_router_loss_is_mean_weighted_bce():
    logits, target = router_example()
    u = torch.tensor([[0.5, -1.0], [2.0, 0.0], [-0.5, 1.0], [0.0, 0.0], [1.0, -2.0], [-1.0, 0.3]])
    out = build({"type": "ride_router", "args": {"pos_weight": 100.0}})(logits, target, router_logits=u)
    expected = 0.0
    for row_u, row_t in zip(u.tolist(), ROUTER_TARGETS):
        for ui, ti in zip(row_u, row_t):
            sig = 1 / (1 + math.exp(-ui))
            expected += -(100.0 * ti * math.log(sig) + (1 - ti) * math.log(1 - sig))
    assert out.total.item() == pytest.approx(expected / 12, rel=1e-5)
    with pytest.raises(ValueError, match="experts - 1"):
        build("ride_router")(logits, target, router_logits=u[:, :1])
