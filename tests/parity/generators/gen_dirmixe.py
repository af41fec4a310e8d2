"""Generate tests/parity/fixtures/dirmixe.json from the official DirMixE code (scongl/DirMixE), run outside the project.

    python tests/parity/generators/gen_dirmixe.py --repo /path/to/scongl/DirMixE [--out tests/parity/fixtures/dirmixe.json]

Only the official files ``model/loss.py`` and ``data_loader/imbalance_cifar.py`` are imported (from --repo), on CPU
(``torch.Tensor.cuda`` patched to return the tensor itself). Nothing of this project is imported. Recorded:

* ``loss``: ``LogitAdjustExpertLoss(cls_num_list, lambda_var, power, trials)`` with its pool replaced by fixed
  draws (expert k, Dirichlet w), ``idx = 0``, called as the official trainer does,
  ``loss(output_logits=mean, target=target, extra_info={"logits": logits.transpose(0, 1)})``, once with
  ``flag = True`` (no regulariser) and once with ``flag = False`` (mean + lambda_var * semi-variance); plus the
  centres ``weights1..3`` of ``generate_weights()`` (CIFAR and ImageNet variants).
* ``schedule``: the epochs (1-based, trainer's ``total_epochs = epochs + 1``) in which ``start_new_epoch`` turns the
  regulariser on, for 50 and 200 epochs.
* ``test_sets``: ``DirichletImbalanceCIFAR10.get_img_num_per_cls`` followed by ``gen_imbalanced_data`` (the official
  shifted test-set draw: perturbed profile -> Dirichlet with total concentration n_test per class -> counts scaled
  so the largest is n_test, at least 1 -> per-class shuffle) after ``np.random.seed(seed)``, on a stand-in data set
  whose "images" are their own indices, for forward / uniform / backward at imbalance factor 0.01 and 0.1.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch


PINNED = {"scongl/DirMixE": "2b67827254a2e9a9475dc692a2697a3e5a073ac0"}


def check_commit(repo: Path) -> None:
    """Refuse a checkout whose HEAD is not the pinned commit (the fixture was written from that commit)."""
    import subprocess
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if head != PINNED["scongl/DirMixE"]:
        sys.exit(f"{repo}: HEAD is {head or 'not a git checkout'}, the fixture pins {PINNED['scongl/DirMixE']} "
                 "(git -C REPO checkout <commit>)")


def load(path: Path, name: str) -> types.ModuleType:
    """Import one file of the official repository as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def lt_counts(n_max: int, num_classes: int, factor: float) -> list[int]:
    """floor(n_max * factor ** (c / (C - 1))), the usual exponential profile."""
    return [int(n_max * factor ** (c / (num_classes - 1))) for c in range(num_classes)]


def loss_case(module: types.ModuleType, counts: list[int], power: float, lambda_var: float, trials: int,
              seed: int) -> dict:
    """The official loss on fixed draws, logits and targets, with and without the regulariser."""
    rng = np.random.RandomState(seed)
    criterion = module.LogitAdjustExpertLoss(cls_num_list=counts, lambda_var=lambda_var, power=power, trials=trials)
    criterion.generate_weights()
    centres = [criterion.weights1, criterion.weights2, criterion.weights3]
    experts = [int(k) for k in rng.randint(0, 3, size=trials)]
    draws = [rng.dirichlet(centres[k].numpy().astype(np.float64) * 50.0) for k in experts]  # spread draws: a real test
    logits = torch.from_numpy(rng.randn(8, 3, len(counts)).astype(np.float32) * 3)
    target = torch.from_numpy(rng.randint(0, len(counts), size=8))
    results = {}
    for flag in (True, False):
        criterion.pool = [(torch.tensor(w).float(), k) for w, k in zip(draws, experts)]
        criterion.idx, criterion.flag = 0, flag
        results["mean_only" if flag else "regularised"] = float(criterion(
            output_logits=logits.mean(1), target=target, extra_info={"logits": logits.transpose(0, 1)}))
    return {"cls_num_list": counts, "power": power, "lambda_var": lambda_var, "trials": trials, "experts": experts,
            "draws": [w.tolist() for w in draws], "logits": logits.tolist(), "target": target.tolist(),
            "centres": [c.tolist() for c in centres], **results}


def imagenet_centres(module: types.ModuleType, counts: list[int]) -> list[list[float]]:
    """generate_weights() of the ImageNet variant (inverse prior by sorting the counts)."""
    criterion = module.LogitAdjustExpertLoss(cls_num_list=counts, dataset_type="ImageNet")
    criterion.generate_weights()
    return [criterion.weights1.tolist(), criterion.weights2.tolist(), criterion.weights3.tolist()]


def schedule(module: types.ModuleType, epochs: int) -> list[int]:
    """1-based epochs with the regulariser on (flag False), as the official trainer calls start_new_epoch."""
    criterion = module.LogitAdjustExpertLoss(cls_num_list=[10, 5, 1])
    criterion.pool = []
    on = []
    for epoch in range(1, epochs + 1):
        criterion.start_new_epoch(epoch, epochs + 1)
        if not criterion.flag:
            on.append(epoch)
    return on


def test_set(module: types.ModuleType, targets: np.ndarray, num_classes: int, factor: float, reverse: bool,
             seed: int) -> dict:
    """The official shifted test-set draw on a stand-in data set (data = the image indices)."""
    stand_in = types.SimpleNamespace(data=np.arange(len(targets))[:, None], targets=targets.tolist())
    np.random.seed(seed)
    counts = module.DirichletImbalanceCIFAR10.get_img_num_per_cls(stand_in, num_classes, "exp", factor, reverse)
    module.DirichletImbalanceCIFAR10.gen_imbalanced_data(stand_in, counts)
    return {"num_classes": num_classes, "factor": factor, "reverse": reverse, "seed": seed,
            "counts": [int(c) for c in counts], "indices": stand_in.data[:, 0].tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, help="a checkout of scongl/DirMixE")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "fixtures" / "dirmixe.json"))
    args = parser.parse_args()
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment]  CPU run of the official code
    repo = Path(args.repo)
    check_commit(repo)
    loss_module = load(repo / "model" / "loss.py", "dirmixe_loss")
    data_module = load(repo / "data_loader" / "imbalance_cifar.py", "dirmixe_data")
    rng = np.random.RandomState(7)
    targets10 = rng.permutation(np.repeat(np.arange(10), 100))
    targets100 = rng.permutation(np.repeat(np.arange(100), 100))
    fixture = {
        "source": "scongl/DirMixE model/loss.py LogitAdjustExpertLoss, data_loader/imbalance_cifar.py "
                  "DirichletImbalanceCIFAR10 (commit 2b67827), CPU",
        "torch_version": torch.__version__, "numpy_version": np.__version__,
        "loss": [loss_case(loss_module, lt_counts(5000, 10, 0.01), 1.3, 15.0, 7, 0),
                 loss_case(loss_module, lt_counts(500, 20, 0.01), 1.6, 1.0, 12, 1)],
        "imagenet_centres": {"cls_num_list": [40, 5, 40, 12, 3, 12, 7],
                             "centres": imagenet_centres(loss_module, [40, 5, 40, 12, 3, 12, 7])},
        "schedule": {"50": schedule(loss_module, 50), "200": schedule(loss_module, 200)},
        "test_sets": {"targets10": targets10.tolist(), "targets100": targets100.tolist(), "cases": [
            {"targets": "targets10", **test_set(data_module, targets10, 10, f, r, s)}
            for f, r in ((0.01, False), (1.0, False), (0.01, True), (0.1, False)) for s in (0, 1)] + [
            {"targets": "targets100", **test_set(data_module, targets100, 100, f, r, 3)}
            for f, r in ((0.01, False), (1.0, False), (0.01, True))]},
    }
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _checkout  # the fixtures' shared layout (nothing of the project)
    _checkout.write_fixture(fixture, Path(args.out))


if __name__ == "__main__":
    main()
