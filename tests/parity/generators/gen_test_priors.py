"""Generate tests/parity/fixtures/test_priors.json: the reference shifted CIFAR-100 test sets (forward50 .. backward50).

Run outside the project on checkouts of the pinned commits (``.cuda`` and torchvision's CIFAR integrity check patched
out) on a fake CIFAR-100 (written to a temporary folder) whose TEST split has 100 images per class with labels
``RandomState(21).permutation(repeat(arange(100), 100))`` and whose images store their own index in their first two
bytes (the training split, which only SADE's loader reads and never for the test sets, holds the same 10,000 images):

* ``balpoe_test_all_cifar``: for each prior, the ``(test_imb_factor, reverse)`` of the ``distrb`` table of
  emasa/BalPoE-CalibratedLT ``test_all_cifar.py`` (uniform = factor 0 = the plain test set) and
  ``TestAgnosticImbalanceCIFAR100DataLoader(root, batch_size=128, shuffle=False, training=False, num_workers=2,
  test_imb_factor=..., reverse=...)`` of ``data_loader/cifar_data_loaders.py`` (the call of ``test_all_cifar.py``);
  the indices come from the loader's ``dataset.data``;
* ``sade_test_training_cifar``: the same with the ``distrb`` table (uniform = factor 1) and the loader class of
  Vanint/SADE-AgnosticLT ``test_training_cifar.py`` (its evaluation view ``val_dataset``; the test-time-training
  view holds the same images).

The ``distrb`` tables and the prior order (``test_distribution_set``) are read from the scripts with ``ast``. Each set
is stored as its size, per-class counts, SHA-256 of the index list in dataset order and of the sorted list, and its
first 20 indices.

    python tests/parity/generators/gen_test_priors.py [--repo-path OWNER/NAME=PATH ... | --mirrors DIR] [--out FILE]
"""
from __future__ import annotations

import ast
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: E402

BALPOE = "emasa/BalPoE-CalibratedLT"
SADE = "Vanint/SADE-AgnosticLT"
PINNED = {BALPOE: "ca607aed79e2444684f492035e9c0e7f823084d8", SADE: "cba11b8b0fb91711eeffd5e45311f321f8a88680"}
FIXTURE = "test_priors.json"
LABEL_SEED, PER_CLASS = 21, 100


def script_literal(script: Path, name: str):
    """The literal value assigned to ``name`` in a script (the distrb table, the prior order)."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{script}: no assignment to {name}")


def write_fake_cifar100(root: Path, labels: np.ndarray) -> None:
    """Official cifar-100-python layout; train and test hold the same indexed images and labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        with open(folder / split, "wb") as f:
            pickle.dump({"data": _checkout.indexed_images(len(labels)), "fine_labels": labels.tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


def describe(indices: list[int], labels: np.ndarray, factor: float, reverse: bool) -> dict:
    """Size, counts, fingerprints and first indices of one test set."""
    return {"n": len(indices), "counts": np.bincount(labels[indices], minlength=100).tolist(),
            "sha256_ordered": _checkout.sha256_i8(indices), "sha256_sorted": _checkout.sha256_i8(sorted(indices)),
            "first20": indices[:20], "test_imb_factor": factor, "reverse": reverse}


def loader_sets(loader_class: type, script: Path, root: Path, labels: np.ndarray, view: str) -> dict:
    """Every prior of a script's distrb table through its loader class; ``view`` = the dataset attribute read."""
    table = script_literal(script, "distrb")
    entries = {}
    for prior in script_literal(script, "test_distribution_set"):
        factor, reverse = table[prior]
        loader = loader_class(str(root), batch_size=128, shuffle=False, training=False, num_workers=2,
                              test_imb_factor=factor, reverse=reverse)
        entry = describe(_checkout.image_indices(getattr(loader, view).data), labels, factor, reverse)
        if view == "dataset":
            entry["cls_num_list"] = list(loader.cls_num_list)
        entries[prior] = entry
    return entries


def generate(roots: dict[str, Path]) -> dict:
    """The eleven test sets of both reference scripts."""
    balpoe_loaders = _checkout.import_original(roots[BALPOE], "data_loader.cifar_data_loaders")
    sade_script = _checkout.import_original(roots[SADE], "test_training_cifar")
    labels = _checkout.lt_recipe_labels(100, PER_CLASS, LABEL_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_cifar100(root, labels)
        return {
            "test_labels": {"recipe": f"RandomState({LABEL_SEED}).permutation(repeat(arange(100), {PER_CLASS}))",
                            "seed": LABEL_SEED, "per_class": PER_CLASS, "sha256": _checkout.sha256_i8(labels)},
            "balpoe_test_all_cifar": loader_sets(balpoe_loaders.TestAgnosticImbalanceCIFAR100DataLoader,
                                                 roots[BALPOE] / "test_all_cifar.py", root, labels, "dataset"),
            "sade_test_training_cifar": loader_sets(sade_script.TestAgnosticImbalanceCIFAR100DataLoader,
                                                    roots[SADE] / "test_training_cifar.py", root, labels,
                                                    "val_dataset"),
        }


def main(argv: list[str] | None = None) -> None:
    args = _checkout.parser(__doc__, FIXTURE, PINNED).parse_args(argv)
    roots = _checkout.checkouts(args, PINNED)
    _checkout.cpu_patches()
    _checkout.cifar_integrity_off()
    _checkout.write_fixture(generate(roots), args.out)


if __name__ == "__main__":
    main()
