"""Generate tests/parity/fixtures/sade.json: SADE's training loss and test-time aggregation (Vanint/SADE-AgnosticLT).

Run outside the project on a checkout of the pinned commit, CPU (``.cuda`` patched to a no-op; the torch version is
recorded in the fixture, since ``torch.sort`` orders tied values differently across versions):

* ``loss``: ``model/loss.py`` ``DiverseExpertLoss(cls_num_list=CLS, tau=2)`` called as the trainer does,
  ``loss(output_logits, target, extra_info={"logits": logits.transpose(0, 1)})``, on fixed (12, 3, 10) logits and a
  10-class IR-100 profile without ties; ``inverse_prior`` = ``DiverseExpertLoss.inverse_prior(prior)``;
* ``loss_ties``: the same on the CIFAR-100-LT IR-100 profile (tied tail counts; the original
  ``get_img_num_per_cls``) and on a profile of three tied blocks (20 x 50, 30 x 10, 50 x 5), recording the original
  inverse prior (``torch.sort``, not stable) and, for CIFAR-100, a loss value (targets chosen to hit tied classes);
* ``test_time``: ``test_training(loader, config, model, aggregation_weight, optimizer, None)`` of
  ``test_training_cifar.py`` and of ``test_training_inat.py`` (entropy bonus 0.01), called for two epochs as their
  ``main`` does, with ``aggregation_weight`` = 1/3 each and ``torch.optim.SGD`` built from the ``optimizer`` section
  of ``configs/test_time_cifar100_ir100_sade.json`` / ``configs/test_time_iNaturalist_resnet50_sade.json``; the
  loader yields three fixed batches of two views whose "images" are the per-expert logits themselves (the model
  returns ``{"logits": x}``). Recorded: the cosine term of every step (via a recording ``AverageMeter``), the
  gradient of ``aggregation_weight`` at every step (via an SGD subclass), and the weights after each epoch.

Inputs (``torch.Generator().manual_seed(5)``, in this order): logits ``(rand(12, 3, 10) * 2 - 1) * 30``, target
``randint(0, 10, (12,))``, tie-case logits ``(rand(8, 3, 100) * 2 - 1) * 30``, then per test-time batch
``base = randn(8, 3, 10) * [4, 2, 6]`` (per expert) and the two views ``base + 0.8 * randn(8, 3, 10)`` each.

    python tests/parity/generators/gen_sade.py [--repo-path PATH | --mirrors DIR] [--out FILE]
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: E402

SADE = "Vanint/SADE-AgnosticLT"
PINNED = {SADE: "cba11b8b0fb91711eeffd5e45311f321f8a88680"}
FIXTURE = "sade.json"
CLS = [500, 300, 180, 108, 64, 38, 23, 14, 8, 5]
TIES = [50] * 20 + [10] * 30 + [5] * 50
TIE_TARGETS = [99, 98, 88, 88, 95, 0, 1, 50]
TAU = 2
EPOCHS = 2
SCRIPTS = {  # key -> (module, config, note in the fixture's source)
    "cifar": ("test_training_cifar", "configs/test_time_cifar100_ir100_sade.json",
              "called once per epoch as main does"),
    "inat": ("test_training_inat", "configs/test_time_iNaturalist_resnet50_sade.json", "entropy bonus 0.01"),
}


def inputs() -> dict:
    """The fixed inputs (one seeded generator, drawn in a fixed order)."""
    g = torch.Generator().manual_seed(5)
    logits = (torch.rand(12, 3, 10, generator=g) * 2 - 1) * 30
    target = torch.randint(0, 10, (12,), generator=g)
    tie_logits = (torch.rand(8, 3, 100, generator=g) * 2 - 1) * 30
    scale = torch.tensor([4.0, 2.0, 6.0]).view(1, 3, 1)
    views = []
    for _ in range(3):
        base = torch.randn(8, 3, 10, generator=g) * scale
        view1 = base + 0.8 * torch.randn(8, 3, 10, generator=g)
        view2 = base + 0.8 * torch.randn(8, 3, 10, generator=g)
        views.append((view1, view2))
    return {"logits": logits, "target": target, "tie_logits": tie_logits, "views": views}


def loss_value(loss: torch.nn.Module, logits: torch.Tensor, target: torch.Tensor) -> float:
    """The original loss called as SADE's trainer calls it."""
    return float(loss(logits.mean(1), target, extra_info={"logits": logits.transpose(0, 1)}))


def inverse_prior_case(loss_module: types.ModuleType, counts: list[int]) -> tuple[torch.nn.Module, dict]:
    """The original inverse prior of a profile with tied counts, and whether it equals the reversed prior."""
    loss = loss_module.DiverseExpertLoss(cls_num_list=counts, tau=TAU)
    inverse = loss.inverse_prior(loss.prior)
    return loss, {"cls_num_list": counts, "inverse_prior": inverse.tolist(),
                  "equals_reversed_prior": bool(torch.equal(inverse, loss.prior.flip(0)))}


class LogitsAsImages(torch.nn.Module):
    """The 'network' of the test-time case: its input already is the (B, E, C) expert logits."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": x}


def test_time_run(root: Path, key: str, views: list) -> dict:
    """Two epochs of the original test_training with recording meters and optimizer."""
    module_name, config_path, note = SCRIPTS[key]
    script = _checkout.import_original(root, module_name)
    config = _checkout.config_of(root, config_path)
    cosines: list[float] = []
    grads: list[list[float]] = []

    class RecordingMeter(script.AverageMeter):
        def update(self, val, n=1):
            cosines.append(float(val))
            super().update(val, n)

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            grads.append(self.param_groups[0]["params"][0].grad.tolist())
            return super().step(closure)

    script.AverageMeter = RecordingMeter
    aggregation_weight = torch.nn.Parameter(torch.FloatTensor(3), requires_grad=True)
    aggregation_weight.data.fill_(1 / 3)
    optimizer_args = config["optimizer"]["args"]
    optimizer = RecordingSGD([aggregation_weight], **optimizer_args)
    model = LogitsAsImages()
    epochs = []
    for _ in range(EPOCHS):  # main's loop: stop early when a weight falls under 0.05
        loader = [([v1.clone(), v2.clone()], torch.zeros(len(v1), dtype=torch.long)) for v1, v2 in views]
        record = script.test_training(loader, config, model, aggregation_weight, optimizer, None)
        epochs.append({"rounded_weights": [float(w) for w in record],
                       "aggregation_weight": aggregation_weight.detach().tolist(),
                       "softmax": torch.softmax(aggregation_weight.detach(), dim=0).tolist()})
        if record[0] < 0.05 or record[1] < 0.05 or record[2] < 0.05:
            break
    return {"source": f"{SADE} {module_name}.py test_training ({note})",
            "config": Path(config_path).name, "optimizer": optimizer_args,
            "ssl_cosine_per_step": cosines, "grad_per_step": grads, "epochs": epochs}


def generate(root: Path) -> dict:
    """Loss values, tied inverse priors and the two test-time runs."""
    loss_module = _checkout.import_original(root, "model.loss")
    data_module = _checkout.import_original(root, "data_loader.imbalance_cifar")
    x = inputs()
    loss = loss_module.DiverseExpertLoss(cls_num_list=CLS, tau=TAU)
    cifar100_counts = data_module.IMBALANCECIFAR100.get_img_num_per_cls(
        types.SimpleNamespace(data=range(50000)), 100, "exp", 0.01, False)
    cifar_loss, cifar_case = inverse_prior_case(loss_module, cifar100_counts)
    cifar_case.update({"logits": x["tie_logits"].tolist(), "target": TIE_TARGETS,
                       "loss": loss_value(cifar_loss, x["tie_logits"], torch.tensor(TIE_TARGETS))})
    _, ties_case = inverse_prior_case(loss_module, TIES)
    return {
        "loss": {"source": f"{SADE} model/loss.py DiverseExpertLoss(cls_num_list, tau={TAU})",
                 "cls_num_list": CLS, "tau": TAU, "logits": x["logits"].tolist(), "target": x["target"].tolist(),
                 "loss": loss_value(loss, x["logits"], x["target"]),
                 "inverse_prior": loss.inverse_prior(loss.prior).tolist()},
        "loss_ties": {"source": "DiverseExpertLoss.inverse_prior on CPU (torch.sort, not stable) for tied counts",
                      "torch_version": torch.__version__, "cifar100_ir100": cifar_case, "ties": ties_case},
        "test_time": {"views": [[v1.tolist(), v2.tolist()] for v1, v2 in x["views"]],
                      **{key: test_time_run(root, key, x["views"]) for key in SCRIPTS}},
    }


def main(argv: list[str] | None = None) -> None:
    args = _checkout.parser(__doc__, FIXTURE, PINNED).parse_args(argv)
    roots = _checkout.checkouts(args, PINNED)
    _checkout.cpu_patches()
    torch.set_num_threads(1)
    _checkout.write_fixture(generate(roots[SADE]), args.out)


if __name__ == "__main__":
    main()
