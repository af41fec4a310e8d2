"""NCL, MDCS, BCL and SHIKE losses against hand computations written out with Python's math module (one tiny batch
each), and the parts they are made of (hard-category mask, confident KL, class-averaged contrastive loss)."""
from __future__ import annotations

import math

import pytest
import torch

from longtail.model.losses.bcl import balanced_contrastive
from longtail.model.losses.mdcs import confident_kl
from longtail.model.losses.ncl import hard_category_mask
from longtail.registry import LOSSES
from longtail.utils.errors import ConfigError


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def cross_entropy(xs: list[float], y: int) -> float:
    return -math.log(softmax(xs)[y])


def kl(p: list[float], q: list[float]) -> float:
    """sum_c p_c (log p_c - log q_c)."""
    return sum(pc * (math.log(pc) - math.log(qc)) for pc, qc in zip(p, q))


# ----------------------------------------------------------------------------------------------------------- NCL
def test_hard_category_mask_keeps_the_target_among_the_top_k():
    logits = torch.tensor([[5.0, 4.0, 3.0, -9.0], [0.0, 1.0, 2.0, 3.0]])
    mask = hard_category_mask(logits, torch.tensor([3, 0]), 2)
    assert mask.tolist() == [[1, 0, 0, 1], [1, 0, 0, 1]]  # the target forced in, then the largest other logit


def test_ncl_loss_by_hand():
    """Two experts, three classes, one sample of class 2, hcm_n 2, counts (4, 2, 1):
    b_e = z_e + log n; M keeps class 2 (the target) and expert 0's largest other logit (class 0);
    L = sum_e [CE(b_e) + CE(b_e * M)] + alpha/(E-1) sum_{i!=j} KL(p_j || p_i) on b and on b*M, log p = log(p + 1e-9)."""
    z = [[1.0, 0.5, -0.5], [0.2, 0.8, 0.1]]
    counts, y, alpha, beta = [4, 2, 1], 2, 0.6, 0.3
    b = [[z[e][c] + math.log(counts[c]) for c in range(3)] for e in range(2)]
    mask = [1.0, 0.0, 1.0]  # expert 0's raw logits rank class 0 first; the target class 2 is forced in
    h = [[b[e][c] * mask[c] for c in range(3)] for e in range(2)]

    def nbod(x: list[list[float]], factor: float) -> float:
        p = [softmax(row) for row in x]
        logp = [[math.log(v + 1e-9) for v in row] for row in p]
        total = sum(sum(p[j][c] * (math.log(p[j][c]) - logp[i][c]) for c in range(3))
                    for i in range(2) for j in range(2) if i != j)
        return factor * total / (2 - 1)

    expected = sum(cross_entropy(b[e], y) + cross_entropy(h[e], y) for e in range(2)) + nbod(b, alpha) + nbod(h, beta)
    criterion = LOSSES.build({"type": "ncl", "args": {"hcm_n": 2, "alpha": alpha, "beta": beta}}, "loss",
                             cls_num_list=counts, num_experts=2)
    result = criterion(torch.tensor([z]), torch.tensor([y]))
    assert float(result.total) == pytest.approx(expected, rel=1e-5)
    assert result.per_expert.tolist() == pytest.approx([cross_entropy(b[e], y) + cross_entropy(h[e], y)
                                                        for e in range(2)], rel=1e-5)


def test_ncl_with_one_expert_has_no_distillation_and_both_sides_of_the_kl_learn():
    criterion = LOSSES.build({"type": "ncl", "args": {"hcm_n": 3}}, "loss", cls_num_list=[5, 3, 2, 1], num_experts=1)
    z = torch.tensor([[[0.3, -0.2, 0.9, 0.1]]])
    assert float(criterion(z, torch.tensor([1])).total) == pytest.approx(float(criterion(z, torch.tensor([1])).per_expert.sum()))
    # mutual learning: the loss of expert 1's distribution also moves expert 0's logits through the KL target side
    two = LOSSES.build({"type": "ncl", "args": {"hcm_n": 4, "ce_ratio": 0.0, "hcm_ratio": 0.0}}, "loss",
                       cls_num_list=[5, 3, 2, 1], num_experts=2)
    logits = torch.tensor([[[0.3, -0.2, 0.9, 0.1], [1.0, 0.0, -1.0, 0.5]]], requires_grad=True)
    two(logits, torch.tensor([1])).total.backward()
    assert logits.grad[0, 0].abs().sum() > 0 and logits.grad[0, 1].abs().sum() > 0


def test_ncl_rejects_bad_settings():
    with pytest.raises(ConfigError, match="hcm_n"):
        LOSSES.build({"type": "ncl", "args": {"hcm_n": 0}}, "loss", cls_num_list=[2, 1], num_experts=2)
    with pytest.raises(ConfigError, match="count is 0"):
        LOSSES.build("ncl", "loss", cls_num_list=[2, 0], num_experts=2)


# ---------------------------------------------------------------------------------------------------------- MDCS
def test_confident_kl_averages_over_the_correct_teacher_rows_only():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    target = torch.tensor([0, 0, 0])  # rows 0 and 2 are predicted correctly by the teacher
    expected = (kl(softmax([2.0, 0.0]), softmax([0.0, 0.0])) + kl(softmax([1.0, 0.0]), softmax([0.0, 3.0]))) / 2
    assert float(confident_kl(teacher, student, target)) == pytest.approx(expected, rel=1e-6)
    assert float(confident_kl(teacher, student, torch.tensor([1, 0, 1]))) == 0.0  # no confident row: 0, not NaN


def test_mdcs_loss_by_hand():
    """Two experts (lambda -0.5 and 2), two images in two views (rows 0-1 weak, 2-3 strong), counts (9, 1):
    a_e = z_e + log(n^lambda_e + 1e-9); L_e = mean_4 CE(a_e) + 0.6 * min(epoch / 4, 1) * KL on confident weak rows."""
    counts, lambdas, epoch, warmup = [9, 1], [-0.5, 2.0], 2, 4
    z = [[[1.0, 0.0], [0.3, 0.2]], [[0.0, 0.5], [-0.4, 0.1]], [[0.7, -0.2], [0.0, 0.0]], [[0.1, 0.2], [0.9, -0.9]]]
    y = [0, 1, 0, 1]
    adjusted = [[[z[i][e][c] + math.log(counts[c] ** lambdas[e] + 1e-9) for c in range(2)] for e in range(2)]
                for i in range(4)]
    expected = []
    for e in range(2):
        ce = sum(cross_entropy(adjusted[i][e], y[i]) for i in range(4)) / 4
        confident = [i for i in range(2) if max(range(2), key=lambda c: adjusted[i][e][c]) == y[i]]
        kd = sum(kl(softmax(adjusted[i][e]), softmax(adjusted[i + 2][e])) for i in confident) / max(len(confident), 1)
        expected.append(ce + 0.6 * (epoch / warmup) * kd)
    criterion = LOSSES.build({"type": "mdcs", "args": {"lambdas": lambdas, "warmup": warmup}}, "loss",
                             cls_num_list=counts, num_experts=2)
    criterion.on_epoch_start(epoch)
    result = criterion(torch.tensor(z), torch.tensor(y))
    assert result.per_expert.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(result.total) == pytest.approx(sum(expected), rel=1e-5)
    assert criterion.num_views == 2


def test_mdcs_teacher_view_gets_no_gradient_from_the_distillation():
    criterion = LOSSES.build({"type": "mdcs", "args": {"lambdas": [0.0]}}, "loss", cls_num_list=[3, 1], num_experts=1)
    criterion.on_epoch_start(100)
    z = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]], requires_grad=True)  # weak view correct (class 0), strong view wrong
    target = torch.tensor([0, 0])
    kd_only = criterion(z, target).total - torch.nn.functional.cross_entropy(z[:, 0], target)
    kd_only.backward()
    assert z.grad[0].abs().sum() == 0 and z.grad[1].abs().sum() > 0


def test_mdcs_needs_one_lambda_per_expert():
    with pytest.raises(ConfigError, match="lambdas has 3 values"):
        LOSSES.build("mdcs", "loss", cls_num_list=[2, 1], num_experts=2)


# ----------------------------------------------------------------------------------------------------------- BCL
def test_balanced_contrastive_by_hand():
    """Anchors v_i (4: two images of classes 0 and 1, two views), prototypes c_0..c_2; for anchor i, the denominator
    sums over classes the MEAN of exp(v_i.u / T) over the candidates u of that class (other anchors + prototype, i
    itself excluded); the loss is -mean_i mean_{p in P(i)} [v_i.p / T - log denominator]."""
    def unit(a: float) -> list[float]:
        return [math.cos(a), math.sin(a)]

    anchors = [unit(0.1), unit(2.0), unit(0.4), unit(2.5)]  # rows: image 0 view 1, image 1 view 1, image 0 view 2, ...
    labels = [0, 1, 0, 1]
    prototypes = [unit(0.0), unit(2.2), unit(4.0)]
    t = 0.5
    candidates = [(a, labels[k], k) for k, a in enumerate(anchors)] + [(p, c, None) for c, p in enumerate(prototypes)]
    total = 0.0
    for i, v in enumerate(anchors):
        sim = {k: (v[0] * u[0] + v[1] * u[1]) / t for k, (u, _, _) in enumerate(candidates)}
        pool = [k for k, (_, _, idx) in enumerate(candidates) if idx != i]
        denominator = sum(sum(math.exp(sim[k]) for k in pool if candidates[k][1] == c)
                          / len([k for k in pool if candidates[k][1] == c]) for c in range(3))
        positives = [k for k in pool if candidates[k][1] == labels[i]]
        total += -sum(sim[k] - math.log(denominator) for k in positives) / len(positives)
    expected = total / len(anchors)
    value = balanced_contrastive(torch.tensor(anchors), torch.tensor(labels), torch.tensor(prototypes), t)
    assert float(value) == pytest.approx(expected, rel=1e-5)


def test_bcl_loss_combines_view0_logit_adjusted_ce_and_contrast():
    counts = [3, 1]
    criterion = LOSSES.build({"type": "bcl", "args": {"alpha": 2.0, "beta": 0.5, "temperature": 1.0, "tau": 1.0}},
                             "loss", cls_num_list=counts, num_experts=1)
    logits = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[9.0, 9.0]], [[9.0, 9.0]], [[5.0, -5.0]], [[5.0, -5.0]]])
    target = torch.tensor([1, 0]).repeat(3)
    projection = torch.nn.functional.normalize(torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]],
                                                             [[1.0, 0.2]], [[0.3, 1.0]]]), dim=-1)
    prototypes = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.5], [0.5, 1.0]]]), dim=-1)
    log_prior = [math.log(3 / 4), math.log(1 / 4)]
    ce = (cross_entropy([1.0 + log_prior[0], 0.0 + log_prior[1]], 1)
          + cross_entropy([0.0 + log_prior[0], 2.0 + log_prior[1]], 0)) / 2
    contrast = float(balanced_contrastive(projection[2:, 0], target[2:], prototypes[0], 1.0))
    result = criterion(logits, target, projection=projection, prototypes=prototypes)
    assert float(result.total) == pytest.approx(2.0 * ce + 0.5 * contrast, rel=1e-5)
    with pytest.raises(ConfigError, match="num_views must be >= 3"):
        LOSSES.build({"type": "bcl", "args": {"num_views": 2}}, "loss", cls_num_list=counts, num_experts=1)


# --------------------------------------------------------------------------------------------------------- SHIKE
def test_shike_loss_by_hand():
    """Two experts, three classes, one sample of class 0: r = (0, zbar_h at the hardest negative h, max_e z_e,c
    elsewhere); L_e = CE(z_e) + hns * KL_m(softmax(r) || softmax(z_e with the target at -30)) + KL_m(p_j || p_e),
    KL_m = KL / (B * C) (PyTorch's default 'mean' reduction)."""
    z = [[3.0, 2.0, -1.0], [1.0, -2.0, 0.5]]
    y, hns, c = 0, 10.0, 3
    mean = [(z[0][k] + z[1][k]) / 2 for k in range(c)]
    hardest = max((k for k in range(c) if k != y), key=lambda k: mean[k])  # class 1: mean 0 > -0.25
    r = [0.0 if k == y else mean[k] if k == hardest else max(z[0][k], z[1][k]) for k in range(c)]
    teacher = softmax(r)
    expected = []
    for e in range(2):
        student = softmax([-30.0 if k == y else z[e][k] for k in range(c)])
        other = softmax(z[1 - e])
        expected.append(cross_entropy(z[e], y) + hns * kl(teacher, student) / c + kl(other, softmax(z[e])) / c)
    criterion = LOSSES.build("shike", "loss", cls_num_list=[1, 1, 1], num_experts=2)
    result = criterion(torch.tensor([z]), torch.tensor([y]))
    assert result.per_expert.tolist() == pytest.approx(expected, rel=1e-5)
    assert float(result.total) == pytest.approx(sum(expected), rel=1e-5)
