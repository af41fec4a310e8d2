"""Class-count profiles of every LT split and every shifted test prior against the closed form and the spec."""
import math

import numpy as np
import pytest

from longtail.data_loader.profiles import (CIFAR_TEST_PRIORS, lt_class_counts, parse_test_prior,
                                  select_per_class, shifted_prior_counts)
from longtail.utils.metrics import shot_masks


def closed_form(n_max, num_classes, factor, reverse=False):
    """floor(n_max * factor ** (c / (C - 1))) computed independently with math.pow."""
    return [math.floor(n_max * math.pow(factor, ((num_classes - 1 - c) if reverse else c) / (num_classes - 1)))
            for c in range(num_classes)]


@pytest.mark.parametrize("n_max,num_classes,imb_factor,total,head,tail", [
    (5000, 10, 0.1, 20431, [5000, 3871, 2997], [645, 500]),
    (5000, 10, 0.02, 13996, [5000, 3237, 2096], [154, 100]),
    (5000, 10, 0.01, 12406, [5000, 2997, 1796], [83, 50]),
    (500, 100, 0.1, 19573, [500, 488, 477], [51, 50]),
    (500, 100, 0.02, 12608, [500, 480, 462], [10, 10]),
    (500, 100, 0.01, 10847, [500, 477, 455], [5, 5]),
    (6000, 10, 0.01, None, [6000], [60]),
])
def test_lt_training_counts_match_spec_and_closed_form(n_max, num_classes, imb_factor, total, head, tail):
    counts = lt_class_counts(n_max, num_classes, imb_factor)
    assert counts == closed_form(n_max, num_classes, imb_factor)
    if total is not None:
        assert sum(counts) == total
    assert counts[: len(head)] == head and counts[-len(tail):] == tail
    assert counts == sorted(counts, reverse=True)


def test_cifar100_ir100_shot_groups_are_35_35_30():
    masks = shot_masks(lt_class_counts(500, 100, 0.01))
    assert [int(m.sum()) for m in masks.values()] == [35, 35, 30]


@pytest.mark.parametrize("name,size", [("forward50", 2486), ("forward25", 2956), ("forward10", 3876),
                                       ("forward5", 4932), ("forward2", 7166), ("uniform", 10000)])
def test_cifar100_shifted_test_set_sizes(name, size):
    counts = shifted_prior_counts(name, 100, 100)
    assert sum(counts) == size
    if name != "uniform":
        mirrored = name.replace("forward", "backward")
        assert shifted_prior_counts(mirrored, 100, 100) == counts[::-1]
        factor, _ = parse_test_prior(name)
        assert counts == closed_form(100, 100, factor)
        assert min(counts) == 100 // int(name[len("forward"):])


def test_prior_names_and_order():
    assert CIFAR_TEST_PRIORS[0] == "forward50" and CIFAR_TEST_PRIORS[5] == "uniform" and CIFAR_TEST_PRIORS[-1] == "backward50"
    assert parse_test_prior("backward5") == (0.2, True)
    with pytest.raises(ValueError, match="forwardK"):
        parse_test_prior("sideways3")


def test_select_per_class_matches_reference_global_rng_procedure():
    rng = np.random.RandomState(7)
    targets = rng.randint(0, 5, size=200)
    counts = [30, 20, 10, 5, 1]
    chosen = select_per_class(targets, counts, seed=0)
    # reference procedure: reseed the global RNG, per class shuffle its indices in place, keep the first n_c
    state = np.random.get_state()
    np.random.seed(0)
    expected = []
    for cls, n in enumerate(counts):
        idx = np.where(targets == cls)[0]
        np.random.shuffle(idx)
        expected.extend(idx[:n])
    np.random.set_state(state)
    assert chosen.tolist() == expected
    assert np.bincount(targets[chosen], minlength=5).tolist() == counts
