"""SADE: expert losses against hand computations, the inverse prior, test-time aggregation and its view augmentation."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from longtail.registry import AUGMENTS
from longtail.registry import IMAGE_AUGMENTS
from longtail.data_loader.profiles import lt_class_counts
from longtail.data_loader.views import adjust_hue, gaussian_blur, hsv_to_rgb, random_resized_crop, rgb_to_hsv
from longtail.model.losses.sade import inverse_prior
from longtail.registry import LOSSES
from longtail.cli.train import main as train_main
from longtail.cli.evaluate import priors_main
from longtail.core.hooks import procedure_settings
from longtail.evaluation.hooks import AggregationContext
from longtail.methods.sade import TEST_TIME_DEFAULTS, learn_expert_weights, stability_loss
from longtail.utils.errors import ConfigError

COUNTS = [60, 30, 10]
LOGITS = torch.tensor([[[1.0, 2.0, 0.5], [0.2, -1.0, 0.3], [2.0, 0.0, -0.5]],
                       [[0.1, 0.1, 3.0], [1.5, 0.5, 0.0], [-1.0, 2.0, 1.0]]])  # (B=2, E=3, C=3)
TARGET = [0, 2]


def hand_ce(row, label):
    """-z_y + log sum_j exp(z_j)."""
    return -row[label] + math.log(sum(math.exp(v) for v in row))


def test_sade_expert_losses_match_hand_computation():
    tau = 2.0
    prior = [0.6, 0.3, 0.1]
    inverse = [0.1, 0.3, 0.6]  # the prior's values in reverse rank order
    adjust = [[0.0] * 3,
              [math.log(p + 1e-9) for p in prior],
              [math.log(p + 1e-9) - tau * math.log(q + 1e-9) for p, q in zip(prior, inverse)]]
    expected = [sum(hand_ce([LOGITS[b, e, c].item() + adjust[e][c] for c in range(3)], TARGET[b]) for b in range(2)) / 2
                for e in range(3)]
    loss = LOSSES.build({"type": "sade", "args": {"tau": tau}}, "loss", cls_num_list=COUNTS, num_experts=3)
    out = loss(LOGITS, torch.tensor(TARGET))
    assert out.per_expert.tolist() == pytest.approx(expected, rel=1e-5)
    assert out.total.item() == pytest.approx(sum(expected), rel=1e-5)  # summed, not averaged


def test_sade_needs_exactly_three_experts():
    with pytest.raises(ConfigError, match="exactly 3 experts"):
        LOSSES.build("sade", "loss", cls_num_list=COUNTS, num_experts=4)
    loss = LOSSES.build("sade", "loss", cls_num_list=COUNTS, num_experts=3)
    with pytest.raises(ValueError, match="num_experts=3"):
        loss(LOGITS[:, :2], torch.tensor(TARGET))


def test_inverse_prior_of_exponential_profile_is_the_reversed_prior():
    counts = torch.tensor(lt_class_counts(500, 100, 0.01), dtype=torch.float64)
    assert len(set(counts.tolist())) < 100  # the CIFAR-100 profile has tied tail classes
    prior = counts / counts.sum()
    assert torch.equal(inverse_prior(prior), prior.flip(0))
    # non-monotone prior: the largest value goes to the smallest class and vice versa
    assert inverse_prior(torch.tensor([0.2, 0.5, 0.3])).tolist() == pytest.approx([0.5, 0.2, 0.3])


def synthetic_views(test_prior, num=1024, seed=0):
    """Per-view SADE expert logits z_k = evidence + bias_k: forward log pi, uniform 0, backward 2 log pi_inv."""
    classes = len(test_prior)
    train_prior = torch.tensor(lt_class_counts(1000, classes, 0.01), dtype=torch.float64)
    train_prior /= train_prior.sum()
    gen = torch.Generator().manual_seed(seed)
    labels = torch.multinomial(test_prior, num, replacement=True, generator=gen)
    views = []
    for _ in range(2):  # the two views share the label evidence and differ in noise
        evidence = 3.0 * torch.nn.functional.one_hot(labels, classes).double() + 1.5 * torch.randn(num, classes, generator=gen, dtype=torch.float64)
        views.append(torch.stack([evidence + train_prior.log(), evidence, evidence + 2 * train_prior.flip(0).log()], 1).float())
    return views, train_prior


def cached_batches(views, batch_size=128):
    def batches(epoch):
        for start in range(0, len(views[0]), batch_size):
            yield views[0][start:start + batch_size], views[1][start:start + batch_size]
    return batches


def test_aggregation_favours_the_expert_matching_the_test_prior():
    train_prior = synthetic_views(torch.ones(10) / 10)[1]
    forward_views, _ = synthetic_views(train_prior)
    backward_views, _ = synthetic_views(train_prior.flip(0), seed=1)
    forward = learn_expert_weights(cached_batches(forward_views), 3, TEST_TIME_DEFAULTS).weights
    backward = learn_expert_weights(cached_batches(backward_views), 3, TEST_TIME_DEFAULTS).weights
    assert forward.sum().item() == pytest.approx(1.0) and backward.sum().item() == pytest.approx(1.0)
    assert forward[0] > 0.5 > forward[2], forward
    assert backward[2] > 0.5 > backward[0], backward


def test_aggregation_stops_early_and_is_generic_in_the_expert_count():
    views, train_prior = synthetic_views(torch.ones(10) / 10)
    forward_views, _ = synthetic_views(train_prior)
    four = [torch.cat([v, v[:, 1:2]], dim=1) for v in forward_views]  # a fourth (uniform) expert
    result = learn_expert_weights(cached_batches(four), 4, {**TEST_TIME_DEFAULTS, "epochs": 50})
    assert result.weights.shape == (4,)
    assert result.epochs_run < 50 and (torch.round(result.weights, decimals=2) < 0.05).any()
    zero_lr = learn_expert_weights(cached_batches(four), 4, {**TEST_TIME_DEFAULTS, "lr": 0.0})
    assert zero_lr.weights.tolist() == pytest.approx([0.25] * 4) and zero_lr.epochs_run == 5


def test_view_augmentation_is_seeded_and_keeps_uint8_batches():
    augment = AUGMENTS.build({"type": "sade_view", "args": {"resized_crop_scale": [0.2, 1.0]}}, "augment")
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    c = augment(images, torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    gray = AUGMENTS.build("sade_view", "augment")(images[:, :1], torch.Generator().manual_seed(3))
    assert gray.shape == (6, 1, 16, 16)


def test_colour_ops_against_torchvision_and_identities():
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(images)), images, atol=1e-5)
    for shift in (0.1, -0.25):
        expected = TF.adjust_hue(images, shift)
        assert torch.allclose(adjust_hue(images, torch.full((4,), shift)), expected, atol=1e-4)
    flat = torch.full((2, 3, 8, 8), 0.4)
    assert torch.allclose(gaussian_blur(flat, torch.Generator().manual_seed(0), (0.1, 2.0), 1.0), flat, atol=1e-6)
    noise = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    whole = random_resized_crop(noise, torch.Generator().manual_seed(0), (1.0, 1.0), (1.0, 1.0))
    assert torch.allclose(whole, noise, atol=1e-5)  # a full-size crop maps every pixel onto itself
    blurred = gaussian_blur(noise, torch.Generator().manual_seed(0), (1.0, 1.0), 1.0)  # sigma 1 -> 7-tap kernel
    assert torch.allclose(blurred, TF.gaussian_blur(noise, [7, 7], [1.0, 1.0]), atol=1e-5)


@pytest.mark.filterwarnings("ignore:.*differs from the official release")
def test_sade_config_trains_and_test_time_aggregation_reports_weights(fmnist_dir, tmp_path, capsys):
    config = Path(__file__).resolve().parents[2] / "configs/fmnist_ir100/sade.json"
    assert train_main(["-c", str(config), "--data_dir", str(fmnist_dir), "--save_dir", str(tmp_path), "--epochs", "1",
                       "--limit_batches", "2", "--batch_size", "32", "-d", "cpu", "--quiet",
                       "--set", "data_loader.args.imb_factor=0.1", "--set", "trainer.tensorboard=false",
                       "--name", "fmnist_ir100_sade"]) == 0
    checkpoint = sorted(tmp_path.glob("fmnist_ir100_sade/seed*/last.pth"))[-1]
    out = tmp_path / "results"
    assert priors_main(["forward5", "uniform", "backward5"],
                       ["-r", str(checkpoint), "-d", "cpu", "--test_time_aggregation", "--posthoc_bias_correction",
                        "estimate", "--set", "evaluation.test_time.sade.epochs=2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("expert weights") == 3 and "w2" in printed and "prior_tv" in printed
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 6 and {"w0", "w1", "w2", "prior_tv"} <= set(rows[-1])
    for row in rows:
        assert sum(float(row[f"w{e}"]) for e in range(3)) == pytest.approx(1.0, abs=1e-3)
    assert not all(float(r["w0"]) == pytest.approx(1 / 3, abs=1e-4) for r in rows)  # the weights were learned
    # the streaming variant from the command line; with lr 0 its weights stay 1/3, so it must equal the plain mean
    results = {}
    one_pass = ["--set", "evaluation.test_time.sade.epochs=1", "--set", "evaluation.test_time.sade.batch_size=64"]
    for name, extra in [("online", []), ("online_lr0", ["--set", "evaluation.test_time.sade.lr=0"]),
                        ("mean", ["--aggregation", "mean"]), ("one_pass", ["--aggregation", "sade", *one_pass])]:
        aggregation = [] if name in ("mean", "one_pass") else ["--aggregation", "sade_online"]
        assert priors_main(["uniform", "backward5"], ["-r", str(checkpoint), "-d", "cpu", "--out", str(tmp_path / name),
                                                      *aggregation, *extra]) == 0
        results[name] = list(csv.DictReader((tmp_path / name / "results.csv").open()))
    printed = capsys.readouterr().out
    assert printed.count("final expert weights") == 4 and "one online pass" in printed
    assert [r["aggregation"] for r in results["online"]] == ["sade_online"] * 2
    for row in results["online"]:
        assert sum(float(row[f"w{e}"]) for e in range(3)) == pytest.approx(1.0, abs=1e-3)
    assert [r["all"] for r in results["online_lr0"]] == [r["all"] for r in results["mean"]]
    # the original script's final table: every image with the weights after the pass = one epoch of batch 64
    final = [line.split("final expert weights ")[1].split(" after")[0] for line in printed.splitlines()
             if "final expert weights" in line][:2]
    for weights, row in zip(final, results["one_pass"]):
        assert [float(w) for w in weights.split(", ")] == pytest.approx([float(row[f"w{e}"]) for e in range(3)], abs=1e-3)


def test_inat_entropy_bonus_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    view1, view2 = torch.randn(5, 3, 4, generator=gen), torch.randn(5, 3, 4, generator=gen)
    weights = torch.tensor([0.5, 0.3, 0.2])
    p1 = torch.softmax((view1 * weights[None, :, None]).sum(1), 1).double().numpy()
    p2 = torch.softmax((view2 * weights[None, :, None]).sum(1), 1).double().numpy()
    cos = (p1 * p2).sum(1) / (np.linalg.norm(p1, axis=1) * np.linalg.norm(p2, axis=1))
    entropy = -(p1 * np.log(p1)).mean() - (p2 * np.log(p2)).mean()
    assert stability_loss(view1, view2, weights).item() == pytest.approx(-cos.mean(), abs=1e-6)
    assert stability_loss(view1, view2, weights, 0.01).item() == pytest.approx(-cos.mean() - 0.01 * entropy, abs=1e-6)


def test_image_file_view_is_seeded_and_resized():
    from PIL import Image
    view = IMAGE_AUGMENTS.build("sade_view", "augment", size=12)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (20, 30, 3), dtype=np.uint8))
    outputs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outputs.append(np.asarray(view(image)))
    assert outputs[0].shape == (12, 12, 3)
    assert np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[2])


def batch_list(views, batch_size):
    """The view pairs as a list of batches (a single pass)."""
    return [(views[0][s:s + batch_size], views[1][s:s + batch_size]) for s in range(0, len(views[0]), batch_size)]


def test_streaming_weights_are_those_after_each_batch_step():
    """Each image is predicted with the weights right after its own batch's SGD step; the first step is written out
    by hand (Nesterov SGD with weight decay from a = 1/3), the later ones equal a one-epoch run on the batches so far."""
    from longtail.methods.sade import stream_expert_weights

    train_prior = synthetic_views(torch.ones(10) / 10)[1]
    views, _ = synthetic_views(train_prior, num=640)
    batches = batch_list(views, 64)
    settings = {**TEST_TIME_DEFAULTS, "epochs": 1}
    stream = stream_expert_weights(iter(batches), 3, settings)
    assert stream.shape == (640, 3)
    blocks = stream.view(10, 64, 3)
    assert torch.equal(blocks, blocks[:, :1].expand(-1, 64, -1))  # one weight vector per batch
    a0 = torch.full((3,), 1 / 3, requires_grad=True)
    w = torch.softmax(a0, 0)
    p1 = torch.softmax(torch.einsum("nec,e->nc", batches[0][0], w), 1)
    p2 = torch.softmax(torch.einsum("nec,e->nc", batches[0][1], w), 1)
    cos = (p1 * p2).sum(1) / (p1.norm(dim=1) * p2.norm(dim=1))
    (grad,) = torch.autograd.grad(-cos.mean(), a0)
    lr, m, wd = settings["lr"], settings["momentum"], settings["weight_decay"]
    d = grad + wd * a0.detach()
    a1 = a0.detach() - lr * (1 + m) * d  # Nesterov's first step: buffer = d, update d + m * buffer
    assert blocks[0, 0].tolist() == pytest.approx(torch.softmax(a1, 0).tolist(), abs=1e-6)
    for k in (3, 9):
        so_far = learn_expert_weights(lambda epoch: iter(batches[:k + 1]), 3, settings).weights
        assert torch.allclose(blocks[k, 0], so_far, atol=1e-7)
    assert blocks[9, 0, 0] > blocks[0, 0, 0] > 1 / 3  # the forward-prior expert gains weight along the stream


class StreamLoader:
    """A stand-in test loader whose test-time order is the reverse of the given indices (view pairs of 2 x 2 images)."""

    device = torch.device("cpu")

    def __init__(self, images):
        from types import SimpleNamespace
        self.images = images
        self.dataset = SimpleNamespace(image_shape=tuple(images.shape[1:]))
        self.augments = SimpleNamespace(build=lambda spec, where, size: (lambda batch, gen: batch))

    def view_order(self, idx, epoch):
        return idx.flip(0)

    def view_pairs(self, idx, augment, epoch, batch_size):
        order = self.view_order(idx, epoch)
        for s in range(0, len(order), batch_size):
            batch = self.images[order[s:s + batch_size]]
            yield batch, batch.flip(-1)


class PixelExperts(torch.nn.Module):
    """3 experts x 4 classes read off a (12,)-pixel image, so each image has its own expert logits."""

    num_experts = 3

    def forward(self, x):
        return {"logits": x.flatten(1).view(-1, 3, 4)}


def test_online_aggregation_maps_stream_rows_back_to_the_priors_images():
    from types import SimpleNamespace

    from longtail.methods.sade import sade_online_aggregation, stream_expert_weights

    images = torch.randn(40, 1, 3, 4, generator=torch.Generator().manual_seed(0))
    loader = StreamLoader(images)
    run = SimpleNamespace(model=PixelExperts(), label="run", config={"trainer": {}})
    idx = torch.tensor([3, 7, 11, 19, 23, 29, 31, 37])  # a test prior's subset of the 40 images
    settings = procedure_settings("sade_online", {"test_time": {"sade": {"online_batch_size": 4, "lr": 0.5}}})
    context = AggregationContext(run, SimpleNamespace(test_loader=loader), {"backward2": idx}, None, None, settings)
    weights = sade_online_aggregation(context)["backward2"]
    assert weights.shape == (8, 3)
    pairs = [(images[b].flatten(1).view(-1, 3, 4), images[b].flip(-1).flatten(1).view(-1, 3, 4))
             for b in (idx.flip(0)[:4], idx.flip(0)[4:])]
    settings = {**TEST_TIME_DEFAULTS, "online_batch_size": 4, "lr": 0.5}
    first, second = stream_expert_weights(iter(pairs), 3, settings)[[0, 4]]
    assert not torch.allclose(first, second)
    # the stream ran over idx reversed: the last four images of the subset came first
    assert torch.equal(weights[4:], first.expand(4, 3)) and torch.equal(weights[:4], second.expand(4, 3))


def test_per_image_weights_in_the_prior_report():
    from longtail.evaluation.report import ensemble_logits, prior_reports

    logits = torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(1))
    rows = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(2)), 1)
    expected = torch.stack([sum(rows[n, e] * logits[n, e] for e in range(3)) for n in range(6)])
    assert torch.allclose(ensemble_logits(logits, rows), expected, atol=1e-6)
    targets = expected.argmax(1)
    masks = {"many": torch.ones(5, dtype=torch.bool), "medium": torch.zeros(5, dtype=torch.bool),
             "few": torch.zeros(5, dtype=torch.bool)}
    idx = torch.tensor([1, 4, 5])
    (report,) = prior_reports(logits, targets, {"uniform": idx}, masks, weights={"uniform": rows[idx]})
    assert report["all"] == pytest.approx(100.0) and report["n_images"] == 3
    assert [report[f"w{e}"] for e in range(3)] == pytest.approx(rows[idx].mean(0).tolist())
