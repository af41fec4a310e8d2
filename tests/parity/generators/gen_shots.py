"""Generate tests/parity/fixtures/shot_groups.json: the reference many / medium / few-shot groups and group accuracies.

Run outside the project on checkouts of the pinned commits, CPU (``.cuda`` patched to a no-op):

* ``masks``: the ``train_cls_num_list = ...``, ``many_shot = ...``, ``medium_shot = ...`` and ``few_shot = ...``
  statements of emasa/BalPoE-CalibratedLT ``test.py`` and ``test_all_cifar.py``, Vanint/SADE-AgnosticLT ``test.py``
  and frank-xwang/RIDE-LongTailRecognition ``test.py``, read from the scripts (``ast``) and executed on
  ``train_data_loader.cls_num_list`` for four count lists (boundary values 101/100/99/21/20/19, CIFAR-10-LT IR 100,
  CIFAR-100-LT IR 100 and IR 10; the CIFAR profiles from BalPoE's ``get_img_num_per_cls``);
* ``group_accuracy``: fixed predictions (targets ``target``, predicted labels ``pred``, as one-hot logits) evaluated
  by BalPoE ``test_all_cifar.py`` ``validation(loader, model=identity, num_classes, "cpu", many, medium, few)``
  (batches of 128; returns many / medium / few / all in percent, rounded to 2 decimals) with the masks of
  ``test_all_cifar.py``, and by BalPoE ``utils/util.py`` ``GroupAccuracyTracker`` (unrounded fractions;
  ``accuracy_per_class``, ``accuracy``) with the masks of ``test.py`` (the trainer's). Cases: CIFAR-100-LT IR 100
  with 20 test images per class; CIFAR-10-LT IR 100 (empty few group); CIFAR-100-LT IR 100 with a shifted test set
  in which 30 classes have no image; the boundary profile.

Inputs: the counts are rebuilt here; the ``target`` / ``pred`` lists of the four group-accuracy cases are read from
``--inputs`` (default: the committed fixture), because the recipe that drew them was not recorded.

    python tests/parity/generators/gen_shots.py [--repo-path OWNER/NAME=PATH ... | --mirrors DIR] [--out FILE]
"""
from __future__ import annotations

import ast
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: E402

BALPOE = "emasa/BalPoE-CalibratedLT"
SADE = "Vanint/SADE-AgnosticLT"
RIDE = "frank-xwang/RIDE-LongTailRecognition"
PINNED = {BALPOE: "ca607aed79e2444684f492035e9c0e7f823084d8", SADE: "cba11b8b0fb91711eeffd5e45311f321f8a88680",
          RIDE: "ab8be5c21124612493aff87c7cf235d950bda178"}
FIXTURE = "shot_groups.json"
SCRIPTS = [("balpoe", BALPOE, "test.py"), ("balpoe", BALPOE, "test_all_cifar.py"), ("sade", SADE, "test.py"),
           ("ride", RIDE, "test.py")]
MASK_NAMES = ("train_cls_num_list", "many_shot", "medium_shot", "few_shot")
BOUNDARIES = [500, 101, 100, 99, 21, 20, 19, 5]
ACCURACY_CASES = {  # case -> count list of its training set
    "cifar100_ir100_uniform20": "cifar100_ir100", "cifar10_ir100_uniform30": "cifar10_ir100",
    "cifar100_ir100_missing_classes": "cifar100_ir100", "boundaries_uniform25": "boundaries",
}
VALIDATION = "test_all_cifar.validation (rounded %)"


def count_lists(data_module: types.ModuleType) -> dict[str, list[int]]:
    """The four training profiles (CIFAR ones by the original get_img_num_per_cls on 50,000 images)."""
    stand_in = types.SimpleNamespace(data=range(50000))
    lt = lambda cls, c, f: cls.get_img_num_per_cls(stand_in, c, "exp", f, False)  # noqa: E731
    return {"boundaries": BOUNDARIES, "cifar10_ir100": lt(data_module.IMBALANCECIFAR10, 10, 0.01),
            "cifar100_ir100": lt(data_module.IMBALANCECIFAR100, 100, 0.01),
            "cifar100_ir10": lt(data_module.IMBALANCECIFAR100, 100, 0.1)}


def mask_statements(script: Path) -> types.CodeType:
    """The script's own assignments to train_cls_num_list and the three shot masks, in source order."""
    tree = ast.parse(script.read_text())
    statements = [node for node in ast.walk(tree) if isinstance(node, ast.Assign) and len(node.targets) == 1
                  and isinstance(node.targets[0], ast.Name) and node.targets[0].id in MASK_NAMES]
    statements.sort(key=lambda node: node.lineno)
    found = {node.targets[0].id for node in statements}
    if found != set(MASK_NAMES):
        raise SystemExit(f"{script}: expected assignments to {MASK_NAMES}, found {sorted(found)}")
    return compile(ast.Module(body=statements, type_ignores=[]), str(script), "exec")


def masks_of(code: types.CodeType, counts: list[int]) -> dict:
    """Execute the script's statements on a stand-in train loader; the masks as the script computes them."""
    namespace = {"np": np, "torch": torch, "train_data_loader": types.SimpleNamespace(cls_num_list=list(counts))}
    exec(code, namespace)
    return {group: namespace[f"{group}_shot"] for group in ("many", "medium", "few")}


def as_bools(mask) -> list[bool]:
    return [bool(v) for v in np.asarray(mask)]


def accuracy_case(test_all_cifar: types.ModuleType, util: types.ModuleType, train_counts: list[int], target: list[int],
                  pred: list[int], validation_masks: dict, tracker_masks: dict) -> dict:
    """One fixed prediction set through the original validation() and GroupAccuracyTracker."""
    num_classes = len(train_counts)
    targets = torch.tensor(target)
    logits = torch.nn.functional.one_hot(torch.tensor(pred), num_classes).float()
    loader = [(logits[i:i + 128], targets[i:i + 128]) for i in range(0, len(targets), 128)]
    record = test_all_cifar.validation(loader, lambda x: x, num_classes, "cpu", validation_masks["many"],
                                       validation_masks["medium"], validation_masks["few"])
    tracker = util.GroupAccuracyTracker(tracker_masks["many"], tracker_masks["medium"], tracker_masks["few"],
                                        num_classes)
    tracker.update(targets, logits)
    groups = tracker.accuracy_per_group()
    return {
        "train_counts": list(train_counts),
        "test_counts": np.bincount(target, minlength=num_classes).tolist(),
        "target": list(target),
        "pred": list(pred),
        VALIDATION: [float(v) for v in record],
        "GroupAccuracyTracker.accuracy_per_group": {key: float(groups[key]) for key in
                                                    ("many_shot_acc", "medium_shot_acc", "few_shot_acc")},
        "GroupAccuracyTracker.accuracy_per_class": tracker.accuracy_per_class(as_dict=False).tolist(),
        "GroupAccuracyTracker.accuracy": float(tracker.accuracy()),
        "GroupAccuracyTracker.accuracy_balanced": float(tracker.accuracy(balanced=True)),
    }


def generate(roots: dict[str, Path], recorded: dict) -> dict:
    """Masks of every script and group accuracies of the four prediction sets."""
    counts = count_lists(_checkout.import_original(roots[BALPOE], "data_loader.imbalance_cifar"))
    codes = {(short, script): mask_statements(roots[repo] / script) for short, repo, script in SCRIPTS}
    masks = {}
    for (short, script), code in codes.items():
        for name, count_list in counts.items():
            computed = masks_of(code, count_list)
            masks[f"{short}/{script}/{name}"] = {"counts": list(count_list),
                                                 **{group: as_bools(m) for group, m in computed.items()}}
    test_all_cifar = _checkout.import_original(roots[BALPOE], "test_all_cifar")
    util = _checkout.import_original(roots[BALPOE], "utils.util")
    accuracy = {}
    for case, profile in ACCURACY_CASES.items():
        given = recorded["group_accuracy"][case]
        accuracy[case] = accuracy_case(test_all_cifar, util, counts[profile], given["target"], given["pred"],
                                       masks_of(codes["balpoe", "test_all_cifar.py"], counts[profile]),
                                       masks_of(codes["balpoe", "test.py"], counts[profile]))
    return {"masks": masks, "group_accuracy": accuracy}


def main(argv: list[str] | None = None) -> None:
    p = _checkout.parser(__doc__, FIXTURE, PINNED)
    p.add_argument("--inputs", type=Path, default=_checkout.FIXTURES / FIXTURE,
                   help="fixture whose group_accuracy target/pred lists are used (default: %(default)s)")
    args = p.parse_args(argv)
    recorded = json.loads(args.inputs.read_text())
    roots = _checkout.checkouts(args, PINNED)
    _checkout.cpu_patches()
    torch.set_num_threads(1)
    _checkout.write_fixture(generate(roots, recorded), args.out)


if __name__ == "__main__":
    main()
