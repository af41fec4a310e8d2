"""Long-tailed class-count profiles, shifted test priors by name, and the seeded per-class subset selection.

Sampled test priors (docs/test_agnostic.md): Dirichlet draws centred at a forward / uniform / backward profile
(DirMixE's protocol), symmetric Dirichlet draws and tweak-one priors, each turned into per-class image counts of a
balanced test set (:func:`prior_to_counts`).

Shifted test sets of lists (docs/methods.md, shifted test priors): rank the classes by TRAINING frequency (rank 0 = most frequent, ties
keep class order); forward-K keeps ``floor(n_test * (1/K) ** (r / (C - 1)))`` images of the class of rank r,
backward-K the same with the ranks reversed; n_test is the per-class size of the balanced test set.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from longtail.utils.errors import ConfigError, DataError

# Evaluation order of the test-agnostic protocol (docs/methods.md, evaluation protocol).
CIFAR_TEST_PRIORS = ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform",
                     "backward2", "backward5", "backward10", "backward25", "backward50"]
IMAGENET_TEST_PRIORS = list(CIFAR_TEST_PRIORS)
INAT_TEST_PRIORS = ["forward3", "forward2", "uniform", "backward2", "backward3"]
# Shifted lists each txt-list benchmark evaluates (docs/methods.md, shifted test priors); the file of prior P is <prefix><P>.txt.
DATASET_PRIORS = {"imagenet_lt": IMAGENET_TEST_PRIORS, "places_lt": IMAGENET_TEST_PRIORS, "inat2018": INAT_TEST_PRIORS}

_PRIOR_RE = re.compile(r"^(forward|backward)(\d+(?:\.\d+)?)$")


def lt_class_counts(n_max: int, num_classes: int, imb_factor: float, imb_type: str = "exp",
                    reverse: bool = False) -> list[int]:
    """Per-class counts: exp gives floor(n_max * imb_factor ** (c / (C-1))), class 0 the head (tail if reverse)."""
    if isinstance(imb_factor, bool) or not isinstance(imb_factor, (int, float)) or not 0 < imb_factor <= 1:
        raise ConfigError(f"imbalance factor (data_loader.args.imb_factor) must be in (0, 1], i.e. 1 / imbalance "
                          f"ratio (0.01 for IR 100), got {imb_factor!r}")
    if imb_type == "exp":
        if num_classes == 1:
            return [int(n_max)]
        exponents = [(num_classes - 1 - c if reverse else c) / (num_classes - 1) for c in range(num_classes)]
        return [int(n_max * imb_factor ** e) for e in exponents]
    if imb_type == "step":
        half = num_classes // 2
        counts = [int(n_max)] * half + [int(n_max * imb_factor)] * half
        counts += [int(n_max)] * (num_classes - len(counts))
        return counts[::-1] if reverse else counts
    if imb_type == "none":
        return [int(n_max)] * num_classes
    raise ConfigError(f"unknown imbalance profile {imb_type!r}; valid: exp, step, none")


def parse_test_prior(name: str) -> tuple[float, bool]:
    """'forward50' -> (1/50, False), 'backward5' -> (1/5, True), 'uniform' -> (1.0, False)."""
    if name == "uniform":
        return 1.0, False
    match = _PRIOR_RE.match(name)
    if not match:
        raise ConfigError(f"unknown test prior {name!r}: use 'uniform', 'forwardK' or 'backwardK' (e.g. forward50)")
    ratio = float(match.group(2))
    if ratio < 1:
        raise ConfigError(f"test prior {name!r}: the imbalance ratio K must be >= 1")
    return 1.0 / ratio, match.group(1) == "backward"


def shifted_prior_counts(name: str, n_per_class: int, num_classes: int) -> list[int]:
    """Per-class image counts of a shifted test set built from a balanced split with ``n_per_class`` images."""
    factor, reverse = parse_test_prior(name)
    return lt_class_counts(n_per_class, num_classes, factor, "exp", reverse)


def select_per_class(targets: Sequence[int] | np.ndarray, counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """Indices of a class-sorted subset: per class, shuffle its indices (NumPy RandomState(seed)) and keep counts[c].

    This reproduces the reference selection exactly (it reseeds the global RNG with the same seed) without
    touching the global NumPy RNG.
    """
    return select_with(targets, counts, np.random.RandomState(seed))


def select_with(targets: Sequence[int] | np.ndarray, counts: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    """:func:`select_per_class` drawing from ``rng`` (which it advances): per class in class order, shuffle that
    class's indices and keep the first counts[c]; class-sorted, not index-sorted."""
    targets = np.asarray(targets)
    chosen = []
    for cls, count in enumerate(counts):
        idx = np.where(targets == cls)[0]
        if count > len(idx):
            raise DataError(f"class {cls} has {len(idx)} images but the profile asks for {count}")
        rng.shuffle(idx)
        chosen.append(idx[:count])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


def frequency_ranks(train_counts: Sequence[int]) -> np.ndarray:
    """Classes ordered from most to least frequent in training (stable: ties keep the class order)."""
    return np.argsort(-np.asarray(train_counts), kind="stable")


def shifted_class_counts(prior: str, n_test: int, train_counts: Sequence[int]) -> list[int]:
    """Images per class (indexed by class) of test prior ``prior`` drawn from a balanced set of n_test per class."""
    by_rank = shifted_prior_counts(prior, n_test, len(train_counts))
    counts = [0] * len(train_counts)
    for rank, cls in enumerate(frequency_ranks(train_counts)):
        counts[int(cls)] = by_rank[rank]
    return counts


def shifted_subset_indices(test_targets: Sequence[int] | np.ndarray, train_counts: Sequence[int], prior: str,
                           seed: int = 0) -> np.ndarray:
    """Sorted indices into the test list forming test prior ``prior`` ('uniform' keeps everything).

    ``n_test`` is the smallest per-class count of the test list (the per-class size of a balanced list).
    """
    targets = np.asarray(test_targets, dtype=np.int64)
    if prior == "uniform":
        return np.arange(len(targets))
    test_counts = np.bincount(targets, minlength=len(train_counts))
    if len(test_counts) != len(train_counts):
        raise DataError(f"test labels go up to {len(test_counts) - 1} but the training counts cover {len(train_counts)} classes")
    n_test = int(test_counts.min())
    if n_test < 1:
        missing = np.flatnonzero(test_counts == 0)[:5].tolist()
        raise DataError(f"test prior {prior!r} needs every class in the test list; classes {missing} have no test image")
    wanted = shifted_class_counts(prior, n_test, train_counts)
    return np.sort(select_per_class(targets, wanted, seed))


def prior_to_counts(prior: Sequence[float] | np.ndarray, n_test: int, minimum: int = 1) -> list[int]:
    """Per-class counts of the largest subset of a balanced test set (n_test per class) with class proportions
    ``prior``: max(floor(n_test * q_c / max q), minimum), as DirMixE's test sets (the most frequent class keeps all
    its images)."""
    prior = np.asarray(prior, dtype=np.float64)
    return [max(int(q / prior.max() * n_test), minimum) for q in prior]


def perturbed_dirichlet_counts(rng: np.random.RandomState, n_test: int, profile_counts: Sequence[int]) -> list[int]:
    """DirMixE's shifted test-set draw (scongl/DirMixE, data_loader/imbalance_cifar.py, ``get_img_num_per_cls``):
    alpha = the profile's counts, each times (1 + 0.1 * (u - 0.5)) with u ~ U[0, 1) drawn in class order, rescaled
    to sum to n_test; q ~ Dir(alpha); counts = max(int(q_c / max q * n_test), 1). Same draws from the same
    RandomState state as the official code (tests/parity/test_parity_dirmixe.py)."""
    alpha = [float(x) for x in profile_counts]
    for i in range(len(alpha)):
        alpha[i] += (rng.random_sample() - 0.5) * 0.1 * alpha[i]
    total = sum(alpha)
    alpha = [x * n_test / total for x in alpha]
    return prior_to_counts(rng.dirichlet(alpha), n_test)


def by_rank(values_by_rank: Sequence[int], train_counts: Sequence[int]) -> list[int]:
    """Values indexed by training-frequency rank (rank 0 = most frequent) -> indexed by class."""
    out = [0] * len(train_counts)
    for rank, cls in enumerate(frequency_ranks(train_counts)):
        out[int(cls)] = int(values_by_rank[rank])
    return out


def tweak_one_prior(num_classes: int, cls: int, rho: float) -> np.ndarray:
    """Tweak-one shift (Lipton et al., ICML 2018): class ``cls`` gets probability rho, the others share 1 - rho."""
    if num_classes < 2 or not 0 < rho < 1:
        raise ConfigError(f"tweak-one shift needs >= 2 classes and 0 < rho < 1, got {num_classes} classes, rho {rho}")
    prior = np.full(num_classes, (1.0 - rho) / (num_classes - 1))
    prior[cls] = rho
    return prior
