"""Summaries, metrics and the command line of the shifted-prior evaluation (evaluation/shift.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from longtail.cli.evaluate import priors_main
from longtail.evaluation.shift import severity_area, summarise
from longtail.utils.metrics import classwise_calibration_error, reliability_bins


def test_severity_area_is_the_trapezoid_integral_over_the_severity_axis() -> None:
    """Points (-1, 80), (0, 90), (0.5, 70), (1, 60): area = [(80+90)/2 * 1 + (90+70)/2 * 0.5 + (70+60)/2 * 0.5] / 2."""
    frame = pd.DataFrame({"severity": [0.5, -1.0, 1.0, 0.0], "all": [70.0, 80.0, 60.0, 90.0]})
    assert severity_area(frame) == pytest.approx((85.0 + 40.0 + 32.5) / 2)
    assert math.isnan(severity_area(frame.iloc[:1]))


def test_summary_mean_worst_and_groups_by_hand() -> None:
    base = {"checkpoint": "c", "run": "seed1", "seed": 1, "method": "m", "aggregation": "mean", "posthoc": "none"}
    rows = [{**base, "protocol": "dirichlet", "prior": f"p{i}", "family": "f", "severity": float("nan"), "all": a,
             "many": mny, "medium": med, "few": few, "ece": e}
            for i, (a, mny, med, few, e) in enumerate([(90, 95, 85, 70, 2.0), (80, 96, 80, 40, 4.0), (85, 94, 82, 55, 3.0)])]
    summary = summarise(pd.DataFrame(rows)).iloc[0]
    assert summary["mean"] == pytest.approx(85.0) and summary["worst"] == 80.0
    assert summary["spread"] == pytest.approx(np.std([90, 80, 85]))
    assert summary["few"] == pytest.approx(55.0) and summary["few_worst"] == 40.0
    assert summary["ece"] == pytest.approx(3.0) and math.isnan(summary["area"]) and summary["priors"] == 3


def test_classwise_ece_by_hand() -> None:
    """Two classes, two samples, 2 bins. Sample 1: p = (0.9, 0.1), y = 0; sample 2: p = (0.3, 0.7), y = 0.
    Class 0: bin (0.5, 1] holds 0.9 (hit) -> |0.9 - 1| * 1/2; bin (0, 0.5] holds 0.3 (hit) -> |0.3 - 1| * 1/2.
    Class 1: bin (0, 0.5] holds 0.1 (miss) -> |0.1 - 0| / 2; bin (0.5, 1] holds 0.7 (miss) -> |0.7 - 0| / 2.
    Mean over classes: ((0.05 + 0.35) + (0.05 + 0.35)) / 2 = 0.4 -> 40 %."""
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    assert classwise_calibration_error(probs, torch.tensor([0, 0]), n_bins=2) == pytest.approx(40.0)
    bins = reliability_bins(probs, torch.tensor([0, 0]), n_bins=2)
    assert bins["count"] == [0.0, 2.0] and bins["accuracy"] == [0.0, 0.5] and bins["confidence"] == pytest.approx([0.0, 0.8])


def test_saved_views_are_the_model_views_in_test_set_order() -> None:
    """collect_view_logits stores, for every test image, the logits of the views model_view_batches makes for it
    (pair v = test-time epoch v); saved_view_batches then serves them in a seeded order."""
    from longtail.data_loader.datasets import ImageTensorDataset
    from longtail.data_loader.loader import BatchLoader
    from longtail.methods.sade import (TEST_TIME_DEFAULTS, collect_view_logits, model_view_batches,
                                       saved_view_batches)

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 8, 8), generator=gen, dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.arange(10) % 2, 2, (0.5,), (0.5,), "toy/test")
    loader = BatchLoader(data, batch_size=4, sampler="sequential", augment=None, drop_last=False, seed=1)

    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            flat = x.flatten(1)
            return {"logits": torch.stack([flat[:, :2], flat[:, 2:4], flat[:, 4:6]], dim=1)}

    settings = {**TEST_TIME_DEFAULTS, "epochs": 2, "batch_size": 4, "augment": {"type": "sade_view", "args": {"padding": 1}}}
    views = collect_view_logits(Model(), loader, settings)
    assert views.shape == (2, 2, 10, 3, 2)
    everything = torch.arange(10)
    for epoch in range(2):
        order = loader.view_order(everything, epoch)
        first, second = next(iter(model_view_batches(Model(), loader, everything, settings)(epoch)))
        assert torch.equal(views[epoch, 0, order[:4]], first) and torch.equal(views[epoch, 1, order[:4]], second)
    served = list(saved_view_batches(views, torch.tensor([1, 3, 5]), 2)(0))
    assert [len(a) for a, _ in served] == [2, 1]
    again = list(saved_view_batches(views, torch.tensor([1, 3, 5]), 2)(0))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(served, again))


def test_command_line_needs_checkpoints_or_logits_and_checks_names(capsys) -> None:
    with pytest.raises(SystemExit):
        priors_main([], [])
    assert "give checkpoints (-r) or saved logits files (--logits)" in capsys.readouterr().err
    assert priors_main([], ["--logits", "missing.safetensors", "--protocol", "dirichlet"]) == 2
    assert "logits file" in capsys.readouterr().err
    assert priors_main([], ["--logits", "x.safetensors", "--protocol", "gaussian"]) == 2
    assert "--protocol" in capsys.readouterr().err
    assert priors_main([], ["--logits", "x.safetensors", "--estimators", "bbse,magic"]) == 2
    assert "--estimators" in capsys.readouterr().err
    assert priors_main([], ["--logits", "x.safetensors", "--protocol", "severity", "--protocol_set",
                            "dirichlet.trials=3"]) == 2
    assert "not among --protocol" in capsys.readouterr().err


@pytest.mark.parametrize("settings", [{"entropy_weight": 0.0, "stop_below": 0.05},
                                      {"entropy_weight": 0.01, "stop_below": 0.05},
                                      {"entropy_weight": 0.0, "stop_below": 0.3, "lr": 5.0}])  # early stops
def test_weights_learned_for_many_test_sets_at_once_equal_one_at_a_time(settings) -> None:
    """learn_weights_from_views (all test sets in one padded batch per step, SGD written out) gives the weights,
    epochs and per-epoch objectives of SADE's learn_expert_weights run on each test set's saved_view_batches."""
    from longtail.methods.sade import TEST_TIME_DEFAULTS, learn_expert_weights, learn_weights_from_views, saved_view_batches

    gen = torch.Generator().manual_seed(0)
    views = torch.randn(3, 2, 700, 3, 10, generator=gen) * 2
    views[..., 0, :] *= 3  # one expert much more confident: weights move
    subsets = [torch.arange(0, 700, 3), torch.arange(5, 400), torch.tensor([1, 2, 3]), torch.arange(0, 700, 7)]
    full = {**TEST_TIME_DEFAULTS, "epochs": 4, **settings}
    results = learn_weights_from_views(views, subsets, full)
    stopped_early = 0
    for idx, result in zip(subsets, results):
        reference = learn_expert_weights(saved_view_batches(views, idx, full["batch_size"]), 3, full)
        assert torch.allclose(result.weights, reference.weights, atol=1e-6)
        assert result.epochs_run == reference.epochs_run
        assert result.losses == pytest.approx(reference.losses, abs=1e-6)
        stopped_early += reference.epochs_run < 4
    assert (stopped_early > 0) == (settings["stop_below"] == 0.3)
