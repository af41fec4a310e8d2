"""Parity with the reference many / medium / few-shot groups and group accuracies.

Fixture ``fixtures/shot_groups.json`` is written by ``tests/parity/generators/gen_shots.py`` in scratch checkouts:

* ``masks``: the three ``many_shot = ...`` / ``medium_shot = ...`` / ``few_shot = ...`` lines of emasa/BalPoE-CalibratedLT
  ``test.py`` and ``test_all_cifar.py``, Vanint/SADE-AgnosticLT ``test.py`` and frank-xwang/RIDE-LongTailRecognition
  ``test.py``, read from the scripts and executed on ``train_cls_num_list`` for four count lists (boundary values
  101/100/99/21/20/19, CIFAR-10-LT IR 100, CIFAR-100-LT IR 100 and IR 10);
* ``group_accuracy``: fixed predictions (targets ``target``, predicted labels ``pred``, as one-hot logits) evaluated
  by BalPoE ``test_all_cifar.py`` ``validation(loader, model=identity, num_classes, "cpu", many, medium, few)``
  (returns many / medium / few / all in percent, rounded to 2 decimals) and by BalPoE ``utils/util.py``
  ``GroupAccuracyTracker`` (unrounded fractions; ``accuracy_per_class``, ``accuracy``). Cases: CIFAR-100-LT IR 100
  with 20 test images per class; CIFAR-10-LT IR 100 (empty few group); CIFAR-100-LT IR 100 with a shifted test set
  in which 30 classes have no image; the boundary profile.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.utils.metrics import accuracy_report, group_classes, per_class_accuracy, shot_masks

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "shot_groups.json").read_text())
VALIDATION = "test_all_cifar.validation (rounded %)"
TRACKER = "GroupAccuracyTracker.accuracy_per_group"


@pytest.mark.parametrize("key", sorted(FIXTURE["masks"]))
def test_masks_match_reference_scripts(key: str) -> None:
    """``shot_masks(counts)`` (defaults 100 / 20) = the masks of every reference script: many n > 100,
    medium 20 <= n <= 100, few n < 20."""
    entry = FIXTURE["masks"][key]
    masks = shot_masks(entry["counts"])
    for group in ("many", "medium", "few"):
        assert masks[group].tolist() == entry[group], group
        assert group_classes(entry["counts"], group) == [c for c, m in enumerate(entry[group]) if m]


def report_of(case: dict) -> dict[str, float]:
    num_classes = len(case["train_counts"])
    logits = torch.nn.functional.one_hot(torch.tensor(case["pred"]), num_classes).float()
    return accuracy_report(logits, torch.tensor(case["target"]), shot_masks(case["train_counts"]))


@pytest.mark.parametrize("name", ["cifar100_ir100_uniform20", "boundaries_uniform25"])
def test_group_accuracy_all_groups_present(name: str) -> None:
    """``accuracy_report`` = the original group accuracies (unweighted class means of per-class recall, percent)
    and the micro 'all' accuracy of ``validation``."""
    case = FIXTURE["group_accuracy"][name]
    report = report_of(case)
    tracker = case[TRACKER]
    assert report["many"] == pytest.approx(100 * tracker["many_shot_acc"], abs=1e-4)
    assert report["medium"] == pytest.approx(100 * tracker["medium_shot_acc"], abs=1e-4)
    assert report["few"] == pytest.approx(100 * tracker["few_shot_acc"], abs=1e-4)
    assert report["all"] == pytest.approx(100 * case["GroupAccuracyTracker.accuracy"], abs=1e-4)
    rounded = [round(report[k], 2) for k in ("many", "medium", "few", "all")]
    assert rounded == pytest.approx(case[VALIDATION], abs=1e-4)
    recall, _ = per_class_accuracy(torch.tensor(case["pred"]), torch.tensor(case["target"]), len(case["train_counts"]))
    assert recall.tolist() == pytest.approx(case["GroupAccuracyTracker.accuracy_per_class"], abs=1e-6)


def test_empty_group_is_nan_in_both() -> None:
    """CIFAR-10-LT IR 100 has no few-shot class: the original's mean of an empty array is nan, the project's group
    accuracy is nan as well (reported as "n/a", docs/methods.md deviation 4); the other groups agree."""
    case = FIXTURE["group_accuracy"]["cifar10_ir100_uniform30"]
    report = report_of(case)
    assert math.isnan(case[VALIDATION][2]) and math.isnan(case[TRACKER]["few_shot_acc"])
    assert math.isnan(report["few"])
    assert report["many"] == pytest.approx(100 * case[TRACKER]["many_shot_acc"], abs=1e-4)
    assert report["medium"] == pytest.approx(100 * case[TRACKER]["medium_shot_acc"], abs=1e-4)
    assert round(report["all"], 2) == pytest.approx(case[VALIDATION][3], abs=1e-4)


def test_classes_without_test_images_documented_difference() -> None:
    """Documented deviation 4 (docs/methods.md): on a test set where some classes have no image, the original's
    per-class recall of those classes is 0/0 = nan and poisons the mean of their group (medium and few are nan in the
    fixture); the project leaves such classes out, i.e. its group accuracy is the nan-ignoring mean of the
    original's per-class accuracies. Groups without missing classes agree exactly."""
    case = FIXTURE["group_accuracy"]["cifar100_ir100_missing_classes"]
    report = report_of(case)
    assert math.isnan(case[VALIDATION][1]) and math.isnan(case[VALIDATION][2])
    per_class = np.array(case["GroupAccuracyTracker.accuracy_per_class"], dtype=np.float64)
    masks = shot_masks(case["train_counts"])
    for group in ("many", "medium", "few"):
        expected = 100 * np.nanmean(per_class[masks[group].numpy()])
        assert report[group] == pytest.approx(expected, abs=1e-4)
        assert not math.isnan(report[group])
    assert report["many"] == pytest.approx(case[VALIDATION][0], abs=5e-3)
    assert report["all"] == pytest.approx(case[VALIDATION][3], abs=5e-3)
