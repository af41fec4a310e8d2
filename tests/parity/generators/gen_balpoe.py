"""Generate tests/parity/fixtures/balpoe.json: BalPoE's expert loss and its mixup combiner (emasa/BalPoE-CalibratedLT).

Run outside the project on a checkout of the pinned commit (``.cuda`` patched to a no-op, CPU):

* ``loss`` / ``per_expert``: ``model/loss.py`` ``BSExpertLoss(cls_num_list=CLS, tau_list=...)`` with the tau_list of
  ``configs/mixup/standard_training/config_cifar100_ir100_bs-experts.json`` ([0, 1.0, 2.0]), called as the trainer
  does, ``loss(output_logits, target, extra_info={"logits": logits.transpose(0, 1)}, return_expert_losses=True)``;
* ``mixup``: ``utils/combiner.py`` ``Combiner(cfg).forward(model, BSExpertLoss, images, target)`` with that config
  (mode ``mixup``, alpha 0.4, ``add_extra_info``) and ``loss.return_expert_losses`` true, where ``model`` is a fixed
  linear map from the (12, 2, 4, 4) images to (B, E, C) expert logits; ``np.random.beta`` and ``torch.randperm``
  are wrapped to record the drawn lambda and permutation (``np.random.seed(3)``, ``torch.manual_seed(4)``).

Inputs (``torch.Generator().manual_seed(1)``, in this order): logits ``(rand(12, 3, 10) * 2 - 1) * 30`` (cosine-head
scale), target ``randint(0, 10, (12,))``, images ``rand(12, 2, 4, 4)``, weight ``randn(30, 32) * 3``; a 10-class
IR-100 profile CLS.

    python tests/parity/generators/gen_balpoe.py [--repo-path PATH | --mirrors DIR] [--out FILE]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _checkout  # noqa: E402

BALPOE = "emasa/BalPoE-CalibratedLT"
PINNED = {BALPOE: "ca607aed79e2444684f492035e9c0e7f823084d8"}
FIXTURE = "balpoe.json"
CONFIG = "configs/mixup/standard_training/config_cifar100_ir100_bs-experts.json"
CLS = [500, 300, 180, 108, 64, 38, 23, 14, 8, 5]


class LinearExperts(torch.nn.Module):
    """Fixed linear 'network': image -> (B, E, C) expert logits; output = their mean (what the originals return)."""

    def __init__(self, weight: torch.Tensor, num_experts: int, num_classes: int) -> None:
        super().__init__()
        self.weight, self.e, self.c = weight, num_experts, num_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = (x.flatten(1) @ self.weight.T).view(-1, self.e, self.c)
        return {"output": z.mean(1), "logits": z}


def inputs() -> dict[str, torch.Tensor]:
    """The fixed inputs (one seeded generator, drawn in a fixed order)."""
    g = torch.Generator().manual_seed(1)
    logits = (torch.rand(12, 3, 10, generator=g) * 2 - 1) * 30
    target = torch.randint(0, 10, (12,), generator=g)
    images = torch.rand(12, 2, 4, 4, generator=g)
    weight = torch.randn(30, 32, generator=g) * 3
    return {"logits": logits, "target": target, "images": images, "weight": weight}


def generate(root: Path) -> dict:
    """Run the original loss and combiner on the fixed inputs."""
    loss_module = _checkout.import_original(root, "model.loss")
    combiner_module = _checkout.import_original(root, "utils.combiner")
    cfg = _checkout.config_of(root, CONFIG)
    tau_list = cfg["loss"]["args"]["tau_list"]
    x = inputs()
    logits, target = x["logits"], x["target"]

    criterion = loss_module.BSExpertLoss(cls_num_list=CLS, tau_list=tau_list)
    loss, expert_losses = criterion(logits.mean(1), target, extra_info={"logits": logits.transpose(0, 1)},
                                    return_expert_losses=True)
    per_expert = [float(expert_losses[f"loss_e_{i}"]) for i in range(len(tau_list))]

    cfg["loss"]["return_expert_losses"] = True
    combiner = combiner_module.Combiner(cfg)
    combiner.update(1)
    model = LinearExperts(x["weight"], len(tau_list), len(CLS))
    drawn: dict[str, object] = {}
    beta, randperm = np.random.beta, torch.randperm

    def recording_beta(*args, **kwargs):
        drawn["lam"] = value = beta(*args, **kwargs)
        return value

    def recording_randperm(*args, **kwargs):
        drawn["perm"] = value = randperm(*args, **kwargs)
        return value

    np.random.seed(3)
    torch.manual_seed(4)
    np.random.beta, torch.randperm = recording_beta, recording_randperm
    try:
        _, loss_dict, accuracy = combiner.forward(model, criterion, x["images"], target)
    finally:
        np.random.beta, torch.randperm = beta, randperm

    return {
        "source": f"{BALPOE} model/loss.py BSExpertLoss(cls_num_list, tau_list={tau_list}) ({CONFIG})",
        "cls_num_list": CLS,
        "tau_list": tau_list,
        "logits": logits.tolist(),
        "target": target.tolist(),
        "loss": float(loss),
        "per_expert": per_expert,
        "mixup": {
            "source": f"{BALPOE} utils/combiner.py Combiner.mixup (mode '{cfg['combiner']['mode']}', alpha "
                      f"{cfg['combiner']['mixup']['alpha']}), model = fixed linear map image -> (B, E, C) logits",
            "images": x["images"].tolist(),
            "weight": x["weight"].tolist(),
            "lam": float(drawn["lam"]),
            "perm": drawn["perm"].tolist(),
            "loss": float(loss_dict["loss"]),
            "per_expert": [float(loss_dict[f"loss_e_{i}"]) for i in range(len(tau_list))],
            "accuracy": float(accuracy),
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = _checkout.parser(__doc__, FIXTURE, PINNED).parse_args(argv)
    roots = _checkout.checkouts(args, PINNED)
    _checkout.cpu_patches()
    torch.set_num_threads(1)
    _checkout.write_fixture(generate(roots[BALPOE]), args.out)


if __name__ == "__main__":
    main()
