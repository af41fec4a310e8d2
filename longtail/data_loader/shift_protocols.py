"""Families of shifted test priors (docs/test_agnostic.md): each turns a balanced test set (its labels) and the
training counts into named index subsets, seeded and identical for every method evaluated with the same seed.

Registered in ``TEST_PROTOCOLS`` as ``fn(pool, **settings) -> [ShiftedPrior]`` with a ``defaults`` dict:

* ``fixed``: the data set's own named priors (forward50 ... backward50, or the official lists of a txt-list data
  set); a file of saved logits carries them, otherwise they are rebuilt with profiles.shifted_subset_indices.
* ``dirichlet``: DirMixE's protocol (Yang et al., ICML 2024): per centre (forward-K / uniform / backward-K profile)
  ``trials`` test sets drawn as the official code does (profiles.perturbed_dirichlet_counts).
* ``dirichlet_sym``: symmetric Dirichlet(alpha) priors (the label-shift literature's Dirichlet shift, e.g.
  Alexandari et al., ICML 2020), ``trials`` per alpha.
* ``tweak_one``: one class gets probability rho, the rest share 1 - rho (Lipton et al., ICML 2018).
* ``severity``: backward-K ... uniform ... forward-K for K in ``ratios`` (the severity curve; its end points are
  the fixed forward/backward-K sets of the same name).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from longtail.data_loader.profiles import (by_rank, lt_class_counts, parse_test_prior, perturbed_dirichlet_counts,
                                           prior_to_counts, select_with, shifted_subset_indices, tweak_one_prior)
from longtail.registry import TEST_PROTOCOLS
from longtail.utils.errors import ConfigError, DataError
from longtail.utils.seed import Stream, derive_seed

PROTOCOL_IDS = {"dirichlet": 1, "dirichlet_sym": 2, "tweak_one": 3}  # part of what a protocol seed means


@dataclass
class PriorPool:
    """What every protocol draws from: the balanced test set's labels, the training counts, the protocol seed, and
    the data set's own named test priors (name -> indices) with the seed that rebuilds missing ones."""

    targets: np.ndarray
    train_counts: list[int]
    seed: int = 0
    fixed: dict[str, np.ndarray] = field(default_factory=dict)
    fixed_seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.train_counts)

    @property
    def n_test(self) -> int:
        """Images per class of the balanced test set (its smallest class)."""
        counts = np.bincount(self.targets, minlength=self.num_classes)
        if len(counts) != self.num_classes or counts.min() < 1:
            raise DataError(f"shifted test priors need every one of the {self.num_classes} training classes in the "
                            f"test set; the test labels have counts {counts.tolist()[:10]}...")
        return int(counts.min())

    def named(self, name: str) -> np.ndarray:
        """The indices of the named prior: the data set's own subset when known, else rebuilt from the labels."""
        if name in self.fixed:
            return np.sort(np.asarray(self.fixed[name], dtype=np.int64))
        return shifted_subset_indices(self.targets, self.train_counts, name, self.fixed_seed)


@dataclass
class ShiftedPrior:
    """One test set of a protocol: its name (unique within the protocol), its family (the group it is summarised
    in: a Dirichlet centre, an alpha, a rho, a side of the severity curve), its sorted indices into the test set,
    and its position on the severity axis (signed log ratio over log of the largest ratio; severity only)."""

    name: str
    family: str
    indices: np.ndarray
    severity: float = float("nan")


def protocol_rng(pool: PriorPool, protocol: str, *keys: int) -> np.random.RandomState:
    """A legacy RandomState (the official code's generator) for one draw of ``protocol``, from the protocol seed."""
    return np.random.RandomState(derive_seed(pool.seed, Stream.TEST_PRIOR, PROTOCOL_IDS[protocol], *keys) % 2**32)


def draw_subset(pool: PriorPool, counts: Sequence[int], rng: np.random.RandomState) -> np.ndarray:
    """Sorted indices: per class (in class order) a shuffle of its test images from ``rng``, the first counts[c]."""
    return np.sort(select_with(pool.targets, counts, rng))


def centre_profile(centre: str, n_test: int, num_classes: int) -> list[int]:
    """Counts by frequency rank of a centre name: 'uniform', 'forwardK' or 'backwardK' (exp profile of ratio K), at
    least 1 (a Dirichlet parameter must be > 0; the official code fails when a count rounds to 0, i.e. when
    n_test < K)."""
    factor, reverse = parse_test_prior(centre)
    return [max(c, 1) for c in lt_class_counts(n_test, num_classes, factor, "exp", reverse)]


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"protocol setting {name} must be a positive integer, got {value!r}")
    return value


@TEST_PROTOCOLS.register("fixed")
def fixed_protocol(pool: PriorPool, priors: Sequence[str] = ()) -> list[ShiftedPrior]:
    """The data set's own named priors (``priors``: their order; default every one the pool knows)."""
    names = list(priors) or list(pool.fixed)
    if not names:
        raise ConfigError("protocol 'fixed' has no priors: pass --priors (e.g. forward50,uniform,backward50)")
    return [ShiftedPrior(name, name, pool.named(name), severity_of(name)) for name in names]


fixed_protocol.defaults = {"priors": []}  # type: ignore[attr-defined]


@TEST_PROTOCOLS.register("dirichlet")
def dirichlet_protocol(pool: PriorPool, centres: Sequence[str] = ("forward100", "uniform", "backward100"),
                       trials: int = 10) -> list[ShiftedPrior]:
    """DirMixE's protocol: per centre, ``trials`` test sets, each from a Dirichlet with total concentration n_test
    around the centre's (perturbed) profile (the official script: centres forward-100 / uniform / backward-100
    with --ir 0.01, 3 trials each)."""
    _check_positive_int("dirichlet.trials", trials)
    out = []
    for c, centre in enumerate(centres):
        profile = centre_profile(centre, pool.n_test, pool.num_classes)
        for t in range(trials):
            rng = protocol_rng(pool, "dirichlet", c, t)
            counts = by_rank(perturbed_dirichlet_counts(rng, pool.n_test, profile), pool.train_counts)
            out.append(ShiftedPrior(f"{centre}/t{t}", centre, draw_subset(pool, counts, rng)))
    return out


dirichlet_protocol.defaults = {"centres": ["forward100", "uniform", "backward100"], "trials": 10}  # type: ignore[attr-defined]


@TEST_PROTOCOLS.register("dirichlet_sym")
def symmetric_dirichlet_protocol(pool: PriorPool, alphas: Sequence[float] = (0.1, 1.0, 10.0),
                                 trials: int = 10) -> list[ShiftedPrior]:
    """q ~ Dir(alpha * 1) for each alpha, ``trials`` each; counts max(floor(n_test q_c / max q), 1)."""
    _check_positive_int("dirichlet_sym.trials", trials)
    out = []
    for a, alpha in enumerate(alphas):
        if not alpha > 0:
            raise ConfigError(f"protocol setting dirichlet_sym.alphas must be > 0, got {alpha!r}")
        for t in range(trials):
            rng = protocol_rng(pool, "dirichlet_sym", a, t)
            counts = prior_to_counts(rng.dirichlet([float(alpha)] * pool.num_classes), pool.n_test)
            out.append(ShiftedPrior(f"alpha{alpha:g}/t{t}", f"alpha{alpha:g}", draw_subset(pool, counts, rng)))
    return out


symmetric_dirichlet_protocol.defaults = {"alphas": [0.1, 1.0, 10.0], "trials": 10}  # type: ignore[attr-defined]


@TEST_PROTOCOLS.register("tweak_one")
def tweak_one_protocol(pool: PriorPool, rhos: Sequence[float] = (0.5, 0.9), classes: int = 10) -> list[ShiftedPrior]:
    """For ``classes`` classes (all when there are at most that many, else a seeded sample, spread over the
    frequency ranks) and each rho: that class has probability rho, the others share 1 - rho."""
    _check_positive_int("tweak_one.classes", classes)
    ranks = np.argsort(-np.asarray(pool.train_counts), kind="stable")
    if pool.num_classes <= classes:
        chosen = ranks
    else:  # one class from each of ``classes`` equal slices of the frequency ranking
        rng = protocol_rng(pool, "tweak_one", 0, 0)
        edges = np.linspace(0, pool.num_classes, classes + 1).astype(int)
        chosen = np.array([ranks[rng.randint(lo, hi)] for lo, hi in zip(edges[:-1], edges[1:])])
    out = []
    for r, rho in enumerate(rhos):
        for cls in chosen:
            counts = prior_to_counts(tweak_one_prior(pool.num_classes, int(cls), float(rho)), pool.n_test)
            rng = protocol_rng(pool, "tweak_one", 1 + r, int(cls))
            out.append(ShiftedPrior(f"rho{rho:g}/class{int(cls)}", f"rho{rho:g}", draw_subset(pool, counts, rng)))
    return out


tweak_one_protocol.defaults = {"rhos": [0.5, 0.9], "classes": 10}  # type: ignore[attr-defined]


def severity_of(name: str, largest: float | None = None) -> float:
    """Position of a named prior on the severity axis: +log K / log K_max for forward-K, - for backward-K, 0 for
    uniform (nan without a largest ratio)."""
    factor, reverse = parse_test_prior(name)
    if largest is None:
        return float("nan")
    value = math.log(1.0 / factor) / math.log(largest) if largest > 1 else 0.0
    return -value if reverse else value


@TEST_PROTOCOLS.register("severity")
def severity_protocol(pool: PriorPool, ratios: Sequence[float] = (2, 5, 10, 25, 50, 100)) -> list[ShiftedPrior]:
    """backward-K (largest K first) ... uniform ... forward-K (largest last): the named sets of
    profiles.shifted_subset_indices (so the end points equal the fixed priors of the same name)."""
    ratios = sorted(float(k) for k in ratios)
    if not ratios or ratios[0] <= 1:
        raise ConfigError(f"protocol setting severity.ratios must be numbers > 1, got {ratios!r}")
    names = [f"backward{k:g}" for k in reversed(ratios)] + ["uniform"] + [f"forward{k:g}" for k in ratios]
    side = {True: "backward", False: "forward"}
    return [ShiftedPrior(name, "uniform" if name == "uniform" else side[parse_test_prior(name)[1]], pool.named(name),
                         severity_of(name, ratios[-1])) for name in names]


severity_protocol.defaults = {"ratios": [2, 5, 10, 25, 50, 100]}  # type: ignore[attr-defined]


def protocol_settings(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """A protocol's ``defaults`` updated by ``given``; unknown keys are errors naming the valid ones."""
    defaults = dict(getattr(TEST_PROTOCOLS.get(name, where="--protocol"), "defaults", {}))
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(f'{name}.{k}' for k in unknown)} of protocol {name!r}; "
                          f"valid: {', '.join(defaults) or '(none)'}")
    return {**defaults, **given}


def draw_protocol(name: str, pool: PriorPool, settings: dict[str, Any] | None = None) -> list[ShiftedPrior]:
    """The test sets of protocol ``name`` (settings over its defaults)."""
    protocol: Callable[..., list[ShiftedPrior]] = TEST_PROTOCOLS.get(name, where="--protocol")
    return protocol(pool, **protocol_settings(name, settings))
