"""Parity with the reference shifted CIFAR-100 test sets (forward50 .. backward50).

Fixture ``fixtures/test_priors.json`` is written by ``tests/parity/generators/gen_test_priors.py`` in scratch
checkouts of the reference repositories (``.cuda`` and torchvision's CIFAR integrity check patched out) on a fake
CIFAR-100 whose TEST split has 100 images per class with labels ``RandomState(21).permutation(repeat(arange(100),
100))`` and whose images store their own index in their first two bytes:

* ``balpoe_test_all_cifar``: for each prior, the ``(test_imb_factor, reverse)`` of the ``distrb`` table of
  emasa/BalPoE-CalibratedLT ``test_all_cifar.py`` (uniform = factor 0 = the plain test set) and
  ``TestAgnosticImbalanceCIFAR100DataLoader(root, training=False, test_imb_factor=..., reverse=...)`` of
  ``data_loader/cifar_data_loaders.py``; the indices come from the loader's ``dataset.data``;
* ``sade_test_training_cifar``: the same with the ``distrb`` table (uniform = factor 1) and the loader class of
  Vanint/SADE-AgnosticLT ``test_training_cifar.py`` (its evaluation view ``val_dataset``; the test-time-training
  view holds the same images).

Each set is stored as its size, per-class counts, SHA-256 of the index list in dataset order and of the sorted
list, and its first 20 indices.
"""
from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from longtail.registry import DATASETS
from longtail.data_loader.profiles import CIFAR_TEST_PRIORS, lt_class_counts, shifted_subset_indices

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "test_priors.json").read_text())
SHIFTED = [p for p in CIFAR_TEST_PRIORS if p != "uniform"]


def sha(values) -> str:
    return hashlib.sha256(np.asarray(values, dtype="<i8").tobytes()).hexdigest()


def fake_test_labels() -> np.ndarray:
    recipe = FIXTURE["test_labels"]
    labels = np.random.RandomState(recipe["seed"]).permutation(np.repeat(np.arange(100), 100)).astype(np.int64)
    assert sha(labels) == recipe["sha256"]
    return labels


@pytest.fixture(scope="module")
def cifar100_test(tmp_path_factory: pytest.TempPathFactory):
    """The project's ``cifar100_lt`` test split read from fake pickles with the fixture's label order."""
    folder = tmp_path_factory.mktemp("cifar100") / "cifar-100-python"
    folder.mkdir()
    labels = fake_test_labels()
    for split, ys in (("train", labels[:100]), ("test", labels)):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": np.zeros((len(ys), 3072), np.uint8), "fine_labels": ys.tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    return DATASETS.get("cifar100_lt")("test", str(folder.parent), download=False)


def test_prior_names_and_order() -> None:
    """The evaluation order of the reference ``test_distribution_set`` (same in BalPoE and SADE)."""
    assert list(FIXTURE["balpoe_test_all_cifar"]) == CIFAR_TEST_PRIORS
    assert list(FIXTURE["sade_test_training_cifar"]) == CIFAR_TEST_PRIORS


@pytest.mark.parametrize("prior", SHIFTED)
def test_shifted_set_matches_balpoe_test_all_cifar(cifar100_test, prior: str) -> None:
    """``ImageTensorDataset.test_prior_indices(prior)`` (the path ``test_all_cifar.py`` uses) vs BalPoE's
    ``TestAgnosticImbalanceCIFAR100DataLoader``: same images in the same (class-sorted, shuffled) order."""
    expected = FIXTURE["balpoe_test_all_cifar"][prior]
    idx = cifar100_test.test_prior_indices(prior).numpy()
    assert len(idx) == expected["n"]
    assert np.bincount(fake_test_labels()[idx], minlength=100).tolist() == expected["counts"] == expected["cls_num_list"]
    assert idx[:20].tolist() == expected["first20"]
    assert sha(idx) == expected["sha256_ordered"]
    assert sha(np.sort(idx)) == expected["sha256_sorted"]
    # the (factor, reverse) of the original table is what parse_test_prior derives from the name
    factor, reverse = expected["test_imb_factor"], expected["reverse"]
    assert lt_class_counts(100, 100, factor, "exp", reverse=reverse) == expected["counts"]


@pytest.mark.parametrize("prior", SHIFTED)
def test_shifted_set_matches_sade_test_training(cifar100_test, prior: str) -> None:
    """SADE's test-time-training script selects the very same images as BalPoE's evaluation script, and so does
    the project (also through the list-data-set routine ``shifted_subset_indices``, which returns sorted indices)."""
    expected = FIXTURE["sade_test_training_cifar"][prior]
    assert expected["sha256_ordered"] == FIXTURE["balpoe_test_all_cifar"][prior]["sha256_ordered"]
    assert sha(cifar100_test.test_prior_indices(prior).numpy()) == expected["sha256_ordered"]
    train_counts = lt_class_counts(500, 100, 0.01)
    assert sha(shifted_subset_indices(fake_test_labels(), train_counts, prior, seed=0)) == expected["sha256_sorted"]


def test_uniform_is_the_whole_test_split(cifar100_test) -> None:
    """'uniform': BalPoE (factor 0) evaluates the plain test set in file order, SADE's test-time script (factor 1)
    a class-sorted shuffled copy of it; the project keeps file order. All three are the same 10,000 images."""
    balpoe, sade = FIXTURE["balpoe_test_all_cifar"]["uniform"], FIXTURE["sade_test_training_cifar"]["uniform"]
    idx = cifar100_test.test_prior_indices("uniform").numpy()
    assert idx.tolist() == list(range(10000))
    assert sha(idx) == balpoe["sha256_ordered"] == balpoe["sha256_sorted"] == sade["sha256_sorted"]
    assert sade["sha256_ordered"] != sade["sha256_sorted"]  # SADE's order differs, the set does not
    assert balpoe["counts"] == sade["counts"] == [100] * 100
