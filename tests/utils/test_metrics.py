"""Metric functions, post-hoc correction and result tables against hand-computed values."""
import math

import pytest
import torch

from longtail.evaluation.posthoc import log_test_prior
from longtail.evaluation.report import prior_reports, uniform_report
from longtail.utils.metrics import accuracy_report, calibration_errors, group_accuracy, per_class_accuracy, shot_masks


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
