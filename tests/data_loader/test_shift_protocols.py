"""Families of shifted test priors (data_loader/shift_protocols.py) and the held-out split of the LT training sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.data_loader.datasets import ImageTensorDataset, dataset_info
from longtail.data_loader.profiles import lt_class_counts, prior_to_counts
from longtail.data_loader.shift_protocols import PriorPool, draw_protocol, protocol_settings
from longtail.registry import DATASETS
from longtail.utils.errors import ConfigError

TRAIN = lt_class_counts(500, 10, 0.01)
TARGETS = np.random.RandomState(0).permutation(np.repeat(np.arange(10), 40))


def pool(seed: int = 0) -> PriorPool:
    return PriorPool(TARGETS, TRAIN, seed=seed)


@pytest.mark.parametrize("protocol", ["dirichlet", "dirichlet_sym", "tweak_one"])
def test_sampled_test_sets_reproduce_and_change_with_the_seed(protocol: str) -> None:
    """Same seed -> the same index subsets (whatever model is evaluated: they depend only on labels, training
    counts and the seed); another seed -> other subsets."""
    first, again, other = draw_protocol(protocol, pool(0)), draw_protocol(protocol, pool(0)), draw_protocol(protocol, pool(1))
    assert [s.name for s in first] == [s.name for s in again]
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(first, again))
    if protocol != "tweak_one":  # tweak-one's counts are fixed; only which images are drawn changes
        assert any(len(a.indices) != len(b.indices) for a, b in zip(first, other))
    assert any(not np.array_equal(a.indices, b.indices) for a, b in zip(first, other))
    for shifted in first:  # sorted, unique, inside the test set
        assert np.all(np.diff(shifted.indices) > 0) and shifted.indices.max() < len(TARGETS)


def test_dirichlet_centres_shape_the_draws() -> None:
    """Forward-100 draws put most images in the head classes, backward-100 draws in the tail; every class keeps at
    least one image; 3 centres x 4 trials."""
    sets = draw_protocol("dirichlet", pool(), {"trials": 4})
    assert [s.family for s in sets] == ["forward100"] * 4 + ["uniform"] * 4 + ["backward100"] * 4
    for shifted in sets:
        counts = np.bincount(TARGETS[shifted.indices], minlength=10)
        assert counts.min() >= 1 and counts.max() == 40  # the most frequent class keeps all its images
        if shifted.family == "forward100":
            assert counts[:3].sum() > counts[-3:].sum()
        if shifted.family == "backward100":
            assert counts[:3].sum() < counts[-3:].sum()


def test_tweak_one_counts_by_hand() -> None:
    """rho 0.5 on 10 classes: the tweaked class keeps its 40 images, the others floor(40 * (0.5 / 9) / 0.5) = 4."""
    sets = draw_protocol("tweak_one", pool(), {"rhos": [0.5]})
    assert len(sets) == 10
    for shifted in sets:
        cls = int(shifted.name.split("class")[1])
        counts = np.bincount(TARGETS[shifted.indices], minlength=10)
        assert counts[cls] == 40 and sorted(np.delete(counts, cls).tolist()) == [4] * 9


def test_symmetric_dirichlet_counts_follow_the_drawn_prior() -> None:
    """Each test set's counts are prior_to_counts of a Dirichlet draw: max(floor(40 q_c / max q), 1)."""
    assert prior_to_counts([0.5, 0.25, 0.2, 0.05], 40) == [40, 20, 16, 4]
    assert prior_to_counts([0.999, 0.001], 40) == [40, 1]  # at least one image per class
    for shifted in draw_protocol("dirichlet_sym", pool(), {"alphas": [1.0], "trials": 3}):
        counts = np.bincount(TARGETS[shifted.indices], minlength=10)
        assert counts.max() == 40 and counts.min() >= 1


def test_severity_end_points_equal_the_fixed_priors_of_the_data_set() -> None:
    """The severity curve's backward-50 / forward-50 sets are exactly the fixed priors of the same name, as the
    on-the-fly evaluation builds them (ImageTensorDataset.test_prior_indices)."""
    images = torch.zeros(len(TARGETS), 1, 2, 2, dtype=torch.uint8)
    test_set = ImageTensorDataset(images, torch.from_numpy(TARGETS), 10, (0.5,), (0.5,), "toy/test", split_seed=3)
    curve = draw_protocol("severity", PriorPool(TARGETS, TRAIN, fixed_seed=3), {"ratios": [2, 10, 50]})
    assert [s.name for s in curve] == ["backward50", "backward10", "backward2", "uniform", "forward2", "forward10",
                                       "forward50"]
    assert [s.severity for s in curve] == pytest.approx([-1, -np.log(10) / np.log(50), -np.log(2) / np.log(50), 0,
                                                         np.log(2) / np.log(50), np.log(10) / np.log(50), 1])
    for end in (curve[0], curve[-1]):
        assert np.array_equal(end.indices, np.sort(test_set.test_prior_indices(end.name).numpy()))
    fixed = draw_protocol("fixed", PriorPool(TARGETS, TRAIN, fixed={"forward50": curve[-1].indices}), {})
    assert np.array_equal(fixed[0].indices, curve[-1].indices)


def test_protocol_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="valid: centres, trials"):
        protocol_settings("dirichlet", {"trails": 3})
    with pytest.raises(ConfigError, match="positive integer"):
        draw_protocol("dirichlet", pool(), {"trials": 0})
    with pytest.raises(ConfigError, match="--protocol"):
        protocol_settings("dirichlets")


def test_heldout_split_partitions_the_lt_training_set(fmnist_dir) -> None:
    """holdout_fraction > 0: 'train' + 'val' are the LT training set split per class (10%, at most the cap, >= 1),
    seeded; off by default, so the published training set is unchanged; dataset_info knows the new counts."""
    args = {"data_dir": str(fmnist_dir), "imb_factor": 0.1, "download": False}
    full = DATASETS.build({"type": "fmnist_lt", "args": args}, "x", split="train")
    held = {**args, "holdout_fraction": 0.2, "holdout_max_per_class": 5}
    train = DATASETS.build({"type": "fmnist_lt", "args": held}, "x", split="train")
    val = DATASETS.build({"type": "fmnist_lt", "args": held}, "x", split="val")
    expected_val = [max(1, min(5, int(n * 0.2), n - 1)) for n in full.cls_num_list]
    assert val.cls_num_list == expected_val
    assert [a + b for a, b in zip(train.cls_num_list, val.cls_num_list)] == full.cls_num_list
    from longtail.data_loader.datasets import holdout_count

    registered = lt_class_counts(6000, 10, 0.1)  # what dataset_info knows without reading files
    assert dataset_info("fmnist_lt", held)["cls_num_list"] == [n - holdout_count(n, 0.2, 5) for n in registered]
    # the two parts are disjoint pieces of the same images
    together = torch.cat([train.images, val.images]).flatten(1)
    assert len(torch.unique(together, dim=0)) == len(torch.unique(full.images.flatten(1), dim=0))
    again = DATASETS.build({"type": "fmnist_lt", "args": held}, "x", split="val")
    assert torch.equal(again.images, val.images)
    other = DATASETS.build({"type": "fmnist_lt", "args": {**held, "holdout_seed": 1}}, "x", split="val")
    assert not torch.equal(other.images, val.images)
    with pytest.raises(ConfigError, match="holdout_fraction"):
        DATASETS.build({"type": "fmnist_lt", "args": args}, "x", split="val")
