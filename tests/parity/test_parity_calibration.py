"""Parity with BalPoE's calibration metrics (emasa/BalPoE-CalibratedLT ``utils/calibration_metrics.py``).

Fixture ``fixtures/calibration.json`` is written by ``tests/parity/generators/gen_calibration.py`` in a scratch
checkout at the pinned commit (scipy installed into a scratch folder for the module's ``scipy.special.softmax``):
``ECELoss().loss(values, labels, n_bins=15, logits=...)`` and ``MCELoss().loss(...)``, plus the per-bin arrays
``bin_prop`` / ``bin_acc`` / ``bin_conf`` the ECE object keeps (fractions, not percent). Cases:

* ``logits_case``: 300 x 5 float64 logits, ``logits=True`` (the original applies scipy's softmax);
* ``edge_case``: 20-class probability rows whose confidence is exactly k/15 or one ulp below/above it, with mixed
  correctness, ``logits=False``;
* ``ulp_case``: the one edge value on which the two binning rules disagree (see below), ``logits=False``;
* ``float32_probs_case``: 200 x 10 probabilities of a float32 softmax, given to the original as float64.

The project returns percent, so its values are compared with 100 x the original's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from longtail.utils.metrics import calibration_errors

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "calibration.json").read_text())


def test_logits_through_softmax() -> None:
    """``calibration_errors(softmax(logits in float64))`` (what ``test.py`` computes) = original ECE/MCE with
    ``logits=True``."""
    case = FIXTURE["logits_case"]
    probs = torch.softmax(torch.tensor(case["logits"], dtype=torch.float64), dim=1)
    result = calibration_errors(probs, torch.tensor(case["labels"]), n_bins=15)
    assert result["ece"] == pytest.approx(100 * case["ece"], rel=1e-12, abs=1e-12)
    assert result["mce"] == pytest.approx(100 * case["mce"], rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_float32_probabilities(dtype: torch.dtype) -> None:
    """Probabilities of a float32 softmax: same ECE/MCE whether the project receives them as float32 or float64
    (it bins the confidences in float64, as the original does with its float64 array)."""
    case = FIXTURE["float32_probs_case"]
    result = calibration_errors(torch.tensor(case["probs"], dtype=dtype), torch.tensor(case["labels"]))
    assert result["ece"] == pytest.approx(100 * case["ece"], rel=1e-9)
    assert result["mce"] == pytest.approx(100 * case["mce"], rel=1e-9)


def test_bin_edges_k_over_15() -> None:
    """Bins are (k/15, (k+1)/15]: confidences exactly on an edge and one ulp on either side land in the same bins
    as in the original (checked through ECE and MCE on rows with mixed correctness)."""
    case = FIXTURE["edge_case"]
    result = calibration_errors(torch.tensor(case["probs"], dtype=torch.float64), torch.tensor(case["labels"]))
    assert result["ece"] == pytest.approx(100 * case["ece"], rel=1e-12)
    assert result["mce"] == pytest.approx(100 * case["mce"], rel=1e-12)
    # the fixture's bin proportions are what the bin rule (b/15, (b+1)/15] gives
    conf = np.array(case["probs"]).max(axis=1)
    edges = np.linspace(0, 1, 16)
    props = [float(np.mean((conf > lo) & (conf <= hi))) for lo, hi in zip(edges[:-1], edges[1:])]
    assert props == pytest.approx(case["bin_prop"])


def test_one_ulp_above_an_edge_is_binned_as_the_original() -> None:
    """conf = 0.7333333333333334 (11/15 plus one ulp): ``conf * 15`` rounds to exactly 11.0, so a ceil-based bin index
    would put it into bin 10; the project compares with the np.linspace edges as the original does (bin 11).
    Fixture numbers (original): ECE 26.11 %, MCE 30.00 % on three samples (0.7333... correct, 0.7 correct, 0.75 wrong)."""
    case = FIXTURE["ulp_case"]
    assert case["conf"][0] == 0.7333333333333334 and case["conf"][0] > np.linspace(0, 1, 16)[11]
    assert case["bin_prop"][10] == pytest.approx(1 / 3) and case["bin_prop"][11] == pytest.approx(2 / 3)
    result = calibration_errors(torch.tensor(case["probs"], dtype=torch.float64), torch.tensor(case["labels"]))
    assert 100 * case["ece"] == pytest.approx(26.1111111, abs=1e-6)
    assert result["ece"] == pytest.approx(100 * case["ece"], abs=1e-6)
    assert result["mce"] == pytest.approx(100 * case["mce"], abs=1e-6)
