"""Generate tests/parity/fixtures/cifar_lt.json: the reference CIFAR-LT construction (IMBALANCECIFAR10 / 100).

Run outside the project on a checkout of emasa/BalPoE-CalibratedLT at the pinned commit (SADE's and RIDE's
``data_loader/imbalance_cifar.py`` select the same images), ``.cuda`` and torchvision's CIFAR integrity check patched
out:

* ``counts``: ``IMBALANCECIFAR10/100.get_img_num_per_cls(<object with 50,000 images>, C, imb_type, imb_factor,
  reverse)`` for imb_factor 0.01 / 0.02 / 0.1, imb_type exp / step / other ("none"), reverse False / True;
* ``selection``: ``IMBALANCECIFAR10/100(root, imb_type="exp", imb_factor=f, rand_number=0, train=True,
  download=False)`` on fake official-format pickles (written to a temporary folder) with 100 training images per
  class whose labels are ``RandomState(seed).permutation(repeat(arange(C), 100))`` (seed 11 / 12; test split: 10 per
  class, seed 1011 / 1012); each image stores its own index in its first two bytes, which gives back the selected
  indices in the order the dataset keeps them; plus ``np.random.random()`` right after the constructor when the
  global generator was seeded with 1 and with 2 before it (the constructor reseeds it).

    python tests/parity/generators/gen_cifar_lt.py [--repo-path PATH | --mirrors DIR] [--out FILE]
"""
from __future__ import annotations

import pickle
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: E402

BALPOE = "emasa/BalPoE-CalibratedLT"
PINNED = {BALPOE: "ca607aed79e2444684f492035e9c0e7f823084d8"}
FIXTURE = "cifar_lt.json"
FACTORS = (0.01, 0.02, 0.1)
DATASETS = {"cifar10": ("IMBALANCECIFAR10", 10, 11), "cifar100": ("IMBALANCECIFAR100", 100, 12)}  # class, C, seed
PER_CLASS_TRAIN, PER_CLASS_TEST, TEST_SEED_OFFSET = 100, 10, 1000


def write_fake_cifar(root: Path, num_classes: int, train: np.ndarray, test: np.ndarray) -> None:
    """The official python-pickle layout (CIFAR-10: five train batches, test_batch, batches.meta)."""
    names = [f"class{i}" for i in range(num_classes)]
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        offset = 0
        for i, labels in enumerate(np.array_split(train, 5), start=1):
            data = _checkout.indexed_images(len(train))[offset:offset + len(labels)]
            offset += len(labels)
            with open(folder / f"data_batch_{i}", "wb") as f:
                pickle.dump({"data": data, "labels": labels.tolist()}, f)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({"data": _checkout.indexed_images(len(test)), "labels": test.tolist()}, f)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": names}, f)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, labels in (("train", train), ("test", test)):
            with open(folder / split, "wb") as f:
                pickle.dump({"data": _checkout.indexed_images(len(labels)), "fine_labels": labels.tolist()}, f)
        with open(folder / "meta", "wb") as f:
            pickle.dump({"fine_label_names": names}, f)


def counts(module: types.ModuleType) -> dict[str, list[int]]:
    """Original class-count profiles for every (data set, factor, type, direction)."""
    out = {}
    stand_in = types.SimpleNamespace(data=range(50000))  # get_img_num_per_cls reads len(self.data) only
    for name, (cls_name, num_classes, _) in DATASETS.items():
        dataset_class = getattr(module, cls_name)
        for factor in FACTORS:
            for imb_type in ("exp", "step", "none"):
                for direction, reverse in (("forward", False), ("reverse", True)):
                    out[f"{name}/{imb_type}/{factor}/{direction}"] = dataset_class.get_img_num_per_cls(
                        stand_in, num_classes, imb_type, factor, reverse)
    return out


def selection(module: types.ModuleType, name: str, scratch: Path) -> dict:
    """Original long-tailed training subsets of a fake CIFAR with a known label order."""
    cls_name, num_classes, seed = DATASETS[name]
    dataset_class = getattr(module, cls_name)
    train = _checkout.lt_recipe_labels(num_classes, PER_CLASS_TRAIN, seed)
    test = _checkout.lt_recipe_labels(num_classes, PER_CLASS_TEST, seed + TEST_SEED_OFFSET)
    root = scratch / name
    write_fake_cifar(root, num_classes, train, test)
    entry: dict = {
        "train_labels": {"recipe": f"RandomState({seed}).permutation(repeat(arange({num_classes}), "
                                   f"{PER_CLASS_TRAIN}))",
                         "seed": seed, "per_class": PER_CLASS_TRAIN, "sha256": _checkout.sha256_i8(train)},
        "test_labels": {"seed": seed + TEST_SEED_OFFSET, "per_class": PER_CLASS_TEST,
                        "sha256": _checkout.sha256_i8(test)},
    }
    for factor in FACTORS:
        ds = dataset_class(str(root), imb_type="exp", imb_factor=factor, rand_number=0, train=True, download=False)
        entry[str(factor)] = {"indices": _checkout.image_indices(ds.data),
                              "targets_sha256": _checkout.sha256_i8(ds.targets), "cls_num_list": list(ds.cls_num_list)}
    after = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        dataset_class(str(root), imb_type="exp", imb_factor=FACTORS[0], rand_number=0, train=True, download=False)
        after.append(np.random.random())
    entry["global_numpy_random_after_constructor_for_seeds_1_2"] = after
    return entry


def generate(root: Path) -> dict:
    """Counts and selections of the original data set classes."""
    module = _checkout.import_original(root, "data_loader.imbalance_cifar")
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "source": f"{BALPOE} data_loader/imbalance_cifar.py (identical logic in SADE and RIDE)",
            "counts": counts(module),
            "selection": {name: selection(module, name, Path(tmp)) for name in DATASETS},
        }


def main(argv: list[str] | None = None) -> None:
    args = _checkout.parser(__doc__, FIXTURE, PINNED).parse_args(argv)
    roots = _checkout.checkouts(args, PINNED)
    _checkout.cpu_patches()
    _checkout.cifar_integrity_off()
    _checkout.write_fixture(generate(roots[BALPOE]), args.out)


if __name__ == "__main__":
    main()
