"""Metric functions, post-hoc correction and result tables against hand-computed values."""
import math

import pytest
import torch

from evaluation.posthoc import log_test_prior
from evaluation.report import prior_reports, uniform_report
from utils.metrics import accuracy_report, calibration_errors, group_accuracy, mean_std, per_class_accuracy, shot_masks
from utils.tables import plot_priors, read_csv, render, seed_table, write_csv


def test_shot_masks_thresholds():
    masks = shot_masks([500, 101, 100, 20, 19, 5])
    assert masks["many"].tolist() == [True, True, False, False, False, False]
    assert masks["medium"].tolist() == [False, False, True, True, False, False]
    assert masks["few"].tolist() == [False, False, False, False, True, True]


def test_group_accuracy_is_class_mean_and_nan_when_empty():
    pred = torch.tensor([0, 0, 1, 1, 1, 2])
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    recall, support = per_class_accuracy(pred, target, 4)
    assert recall[:3].tolist() == pytest.approx([2 / 3, 1.0, 1.0]) and math.isnan(recall[3])
    assert support.tolist() == [3, 2, 1, 0]
    assert group_accuracy(recall, torch.tensor([True, True, False, False])) == pytest.approx(5 / 6)
    assert math.isnan(group_accuracy(recall, torch.tensor([False, False, False, True])))
    report = accuracy_report(torch.nn.functional.one_hot(pred, 4).float(), target, shot_masks([200, 50, 5, 5]))
    assert report["all"] == pytest.approx(100 * 5 / 6) and report["many"] == pytest.approx(100 * 2 / 3)


def test_ece_on_constructed_example():
    # 4 samples: conf 0.9 correct, 0.9 wrong (same bin: acc 0.5, conf 0.9 -> gap 0.4, weight 1/2)
    #            0.6 correct, 0.6 correct (bin (0.533, 0.6]: acc 1, conf 0.6 -> gap 0.4, weight 1/2)
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    target = torch.tensor([0, 1, 0, 1])
    result = calibration_errors(probs, target, n_bins=15)
    assert result["ece"] == pytest.approx(100 * (0.5 * 0.4 + 0.5 * 0.4))
    assert result["mce"] == pytest.approx(40.0)
    perfect = calibration_errors(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    assert perfect["ece"] == pytest.approx(0.0)


def test_uniform_report_nll_and_expert_accuracy():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 3.0]]])  # (N=2, E=2, C=2)
    target = torch.tensor([0, 1])
    report = uniform_report(logits, target, shot_masks([200, 200]))
    mean = logits.mean(1)
    nll = -(torch.log_softmax(mean, 1)[0, 0] + torch.log_softmax(mean, 1)[1, 1]).item() / 2
    assert report["nll"] == pytest.approx(nll) and report["all"] == 100.0
    assert report["expert0"] == 100.0 and report["expert1"] == 50.0


def test_posthoc_correction_shifts_predictions_towards_test_prior():
    # balanced-looking logits that slightly favour class 1; the test set is dominated by class 0
    logits = torch.tensor([[0.0, 0.2]] * 10).unsqueeze(1)
    target = torch.tensor([0] * 9 + [1])
    masks = shot_masks([200, 200])
    rows = prior_reports(logits, target, {"uniform": torch.arange(10)}, masks, posthoc=("none", "oracle"))
    plain, corrected = rows
    assert plain["all"] == pytest.approx(10.0)  # always predicts class 1
    assert corrected["all"] == pytest.approx(90.0)  # log(0.9) - log(0.1) = 2.2 > 0.2 flips every prediction to 0
    assert log_test_prior(target, 3)[2] == -math.inf


def test_seed_table_mean_std_from_known_numbers(tmp_path):
    rows = [{"run": f"seed{s}", "prior": p, "all": v} for s, vals in ((1, (50.0, 60.0)), (2, (52.0, 64.0)), (3, (54.0, 56.0)))
            for p, v in zip(("uniform", "forward5"), vals)]
    header, body = seed_table(rows, "prior", ["uniform", "forward5"], "all")
    assert header == ["run", "uniform", "forward5"]
    assert body[3] == ["mean", pytest.approx(52.0), pytest.approx(60.0)]
    assert body[4][1] == pytest.approx(2.0) and body[4][2] == pytest.approx(4.0)  # sample std (ddof=1)
    assert mean_std([1.0, float("nan"), 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    md = render(header, body, "markdown")
    assert "| mean" in md and "52.00" in md and md.splitlines()[1].startswith("|--")
    tex = render(header, body, "latex", "caption_x")
    assert r"\toprule" in tex and "52.00" in tex and r"caption\_x" in tex
    path = write_csv(rows, tmp_path / "r.csv")
    back = read_csv(path)
    assert back[0]["all"] == 50.0 and back[0]["prior"] == "uniform"
    png = plot_priors([{**r, "posthoc": False} for r in rows], ["forward5", "uniform"], tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_table_groups_methods():
    rows = [{"run": f"{m}/seed{s}", "method": m, "prior": "uniform", "all": v}
            for m, vals in (("ce", (80.0, 82.0)), ("balpoe", (90.0, 94.0))) for s, v in zip((1, 2), vals)]
    _, body = seed_table(rows, "prior", ["uniform"], "all", group_key="method")
    labels = [r[0] for r in body]
    assert labels == ["ce/seed1", "ce/seed2", "ce mean", "ce std", "balpoe/seed1", "balpoe/seed2", "balpoe mean", "balpoe std"]
    assert body[2][1] == pytest.approx(81.0) and body[6][1] == pytest.approx(92.0)
    assert body[7][1] == pytest.approx(math.sqrt(8.0))
