"""Generate tests/parity/fixtures/methods_2022_24.json from the OFFICIAL code of NCL, MDCS, BCL and SHIKE.

Not run by the test suite. It reads each original repository at a pinned commit from a git mirror (default
/work/.mirror/<owner>+<name>/repo, made by the project's ``fetch`` tool or ``git clone --mirror``), loads the loss
functions from those files into a scratch namespace (nothing of theirs is copied into this repository), runs them on
fixed inputs on the CPU and writes inputs, loss values and input gradients as JSON.

    PYTHONPATH=$PWD python tests/parity/generators/gen_methods_2022_24.py [--mirror DIR] [--out PATH]

CPU shims: ``Tensor.cuda`` and ``torch.cuda.FloatTensor`` return CPU tensors; SHIKE's training script is not imported
(it parses arguments and imports tkinter at import time): its ``mix_outputs`` and ``soft_entropy`` functions are
extracted with ``ast`` and executed alone; its ``networks.py`` is imported with ``turtle`` stubbed.
The SHIKE model case maps this project's ``resnet_cifar_dkf`` weights (built with a fixed seed) onto the official
``ResNet_MoE`` and records its logits, so the test rebuilds the same weights and compares outputs.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPOS = {  # name -> (mirror folder, pinned commit)
    "ncl": ("Bazinga699+NCL", "f64fddb3587b7439f3a8b731448a4ab3d3defe26"),
    "mdcs": ("fistyee+MDCS", "1a1d54e55f114c1d922ded64e3a48a4808bddd23"),
    "bcl": ("FlamieZhu+Balanced-Contrastive-Learning", "f72d0703794bcec8b00da86774c9d780dc721701"),
    "shike": ("jinyan-06+SHIKE", "2b04b62dc534ddf61d896b86e8fb1c1d10b77a61"),
}


def original_file(mirror: Path, name: str, path: str, scratch: Path) -> Path:
    """Write ``path`` of repository ``name`` at its pinned commit into ``scratch`` and return the file."""
    folder, commit = REPOS[name]
    text = subprocess.run(["git", "--git-dir", str(mirror / folder / "repo"), "show", f"{commit}:{path}"],
                          check=True, capture_output=True, text=True).stdout
    target = scratch / name / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def load_module(path: Path, module_name: str) -> types.ModuleType:
    """Import a scratch file as a module."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def extract_functions(path: Path, names: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """Execute only the named top-level functions of a file in ``namespace`` (the file is never imported)."""
    source = path.read_text()
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
    return namespace


def cpu_shims() -> None:
    """Let CUDA-only reference code run on the CPU."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[assignment]
    torch.cuda.FloatTensor = lambda data: torch.tensor(data, dtype=torch.float32)  # type: ignore[assignment]


def tolist(t: torch.Tensor) -> Any:
    return t.detach().double().tolist()


def logits_case(seed: int, batch: int, experts: int, classes: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed logits (B, E, C) and targets (B,)."""
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.rand(batch, experts, classes, generator=gen) * 2 - 1) * scale
    target = torch.randint(0, classes, (batch,), generator=gen)
    return logits, target


COUNTS10 = [500, 300, 180, 110, 65, 40, 24, 14, 9, 5]


def ncl_cases(mirror: Path, scratch: Path) -> dict[str, Any]:
    loss_module = load_module(original_file(mirror, "ncl", "lib/loss/loss.py", scratch), "ncl_loss_original")
    out = []
    for hcm_n, alpha, beta, seed in ((3, 0.6, 0.6, 1), (5, 0.3, 0.9, 2)):
        cfg = types.SimpleNamespace(LOSS=types.SimpleNamespace(
            MULTI_CLASIIFIER_LOSS=types.SimpleNamespace(DIVERSITY_FACTOR=alpha, DIVERSITY_FACTOR_HCM=beta),
            HCM_N=hcm_n, HCM_RATIO=1.0, CE_RATIO=1.0))
        criterion = loss_module.NIL_NBOD({"num_class_list": COUNTS10, "device": torch.device("cpu"), "cfg": cfg})
        logits, target = logits_case(seed, 8, 3, 10, 5.0)
        logits.requires_grad_(True)
        loss = criterion([logits[:, e] for e in range(3)], [target] * 3)
        loss.backward()
        out.append({"hcm_n": hcm_n, "alpha": alpha, "beta": beta, "cls_num_list": COUNTS10, "logits": tolist(logits),
                    "target": target.tolist(), "loss": float(loss), "grad": tolist(logits.grad)})
    return {"cases": out}


def mdcs_cases(mirror: Path, scratch: Path) -> dict[str, Any]:
    loss_module = load_module(original_file(mirror, "mdcs", "model/loss.py", scratch), "mdcs_loss_original")
    out = []
    for epoch, seed, scale in ((1, 3, 5.0), (25, 4, 5.0), (7, 5, 0.5)):
        criterion = loss_module.MDCSLoss(cls_num_list=COUNTS10)
        criterion._hook_before_epoch(epoch)
        logits, target = logits_case(seed, 12, 3, 10, scale)
        target = torch.cat([target[:6], target[:6]])  # two views of six images
        logits.requires_grad_(True)
        output = logits.mean(dim=1)
        loss = criterion(output_logits=output, target=target,
                         extra_info={"logits": logits.transpose(0, 1), "epoch": epoch})
        loss.backward()
        out.append({"epoch": epoch, "cls_num_list": COUNTS10, "logits": tolist(logits), "target": target.tolist(),
                    "loss": float(loss), "grad": tolist(logits.grad)})
    return {"cases": out}


def bcl_cases(mirror: Path, scratch: Path) -> dict[str, Any]:
    contrastive = load_module(original_file(mirror, "bcl", "loss/contrastive.py", scratch), "bcl_contrastive_original")
    adjust = load_module(original_file(mirror, "bcl", "loss/logitadjust.py", scratch), "bcl_logitadjust_original")
    out = []
    for seed, temperature, alpha, beta in ((6, 0.07, 1.0, 0.35), (7, 0.1, 2.0, 0.6)):
        gen = torch.Generator().manual_seed(seed)
        batch, classes, dim = 6, 10, 8
        target = torch.randint(0, classes, (batch,), generator=gen)
        target[1] = target[0]  # a repeated class: positives beyond the other view
        features = F.normalize(torch.randn(batch, 2, dim, generator=gen), dim=-1).requires_grad_(True)
        centers = F.normalize(torch.randn(classes, dim, generator=gen), dim=-1).requires_grad_(True)
        logits = torch.randn(batch, classes, generator=gen).requires_grad_(True)
        scl = contrastive.BalSCL(COUNTS10, temperature)(centers, features, target)
        ce = adjust.LogitAdjust(COUNTS10)(logits, target)
        loss = alpha * ce + beta * scl
        loss.backward()
        out.append({"temperature": temperature, "alpha": alpha, "beta": beta, "cls_num_list": COUNTS10,
                    "target": target.tolist(), "features": tolist(features), "centers": tolist(centers),
                    "logits": tolist(logits), "scl": float(scl), "ce": float(ce), "loss": float(loss),
                    "grad_features": tolist(features.grad), "grad_centers": tolist(centers.grad),
                    "grad_logits": tolist(logits.grad)})
    return {"cases": out}


def shike_cases(mirror: Path, scratch: Path) -> dict[str, Any]:
    script = original_file(mirror, "shike", "cifarTrain.py", scratch)
    utils = original_file(mirror, "shike", "utils.py", scratch)
    namespace: dict[str, Any] = {"torch": torch, "F": F, "nn": nn, "np": np}
    extract_functions(utils, ["soft_entropy"], namespace)
    extract_functions(script, ["mix_outputs"], namespace)
    mix_outputs = namespace["mix_outputs"]
    out = []
    for seed, balance in ((8, False), (9, False), (10, True)):
        logits, target = logits_case(seed, 8, 3, 10, 30.0)  # cosine logits: s * cos in [-30, 30]
        logits.requires_grad_(True)
        labels = F.one_hot(target, 10).float()
        loss, _ = mix_outputs([logits[:, e] for e in range(3)], labels, balance=balance, label_dis=np.array(COUNTS10))
        loss.backward()
        out.append({"balance": balance, "cls_num_list": COUNTS10, "logits": tolist(logits), "target": target.tolist(),
                    "loss": float(loss), "grad": tolist(logits.grad)})
    return {"cases": out, "model": shike_model_case(mirror, scratch)}


def shike_model_case(mirror: Path, scratch: Path) -> dict[str, Any]:
    """Official ResNet_MoE (BasicBlock [1, 1, 1], 3 experts, cosine heads) with this project's seeded weights."""
    sys.modules.setdefault("turtle", types.SimpleNamespace(forward=None))  # networks.py imports turtle.forward
    networks = load_module(original_file(mirror, "shike", "networks.py", scratch), "shike_networks_original")
    from longtail.registry import MODELS

    torch.manual_seed(11)
    ours = MODELS.build({"type": "resnet_cifar_dkf", "args": {"depth": 8, "num_experts": 3}}, "arch", num_classes=10,
                        in_channels=3)
    theirs = networks.ResNet_MoE(networks.BasicBlock, [1, 1, 1], num_experts=3, num_classes=10, use_norm=True)
    state = ours.state_dict()
    mapped = {}
    for key, value in theirs.state_dict().items():
        mapped[key] = official_value(key, state, value.shape)
    theirs.load_state_dict(mapped)
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(4, 3, 32, 32, generator=gen)
    theirs.train()  # batch statistics in every BN layer (no running statistics to copy)
    logits = torch.stack(theirs(x), dim=1)
    return {"seed": 11, "input_seed": 12, "input_shape": [4, 3, 32, 32], "logits": tolist(logits)}


def official_value(key: str, state: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """The project's value for one official ResNet_MoE parameter (expert e's slice of a grouped tensor)."""
    parts = key.split(".")
    if parts[0] in ("conv1", "bn1"):
        ours = {"conv1": "trunk.stem.conv", "bn1": "trunk.stem.bn"}[parts[0]] + "." + parts[1]
        return state[ours].view(shape)
    if parts[0] in ("layer1", "layer2"):
        stage = {"layer1": "trunk.stage1", "layer2": "trunk.stage2"}[parts[0]]
        return state[f"{stage}.{ours_block_key(parts[1:])}"].view(shape)
    if parts[0] == "layer3s":
        e, rest = int(parts[1]), parts[2:]
        full = state[f"branch.stage3.{ours_block_key(rest)}"]
        if not full.dim():  # num_batches_tracked: one counter for all experts
            return full.clone()
        size = full.shape[0] // 3
        return full[e * size:(e + 1) * size].reshape(shape)
    if parts[0] == "shallow_exps":  # shallow_exps.e.convs.StridedConv{k}.conv.{0: conv, 1: bn}.<param>
        e, k, layer, param = int(parts[1]), int(parts[3][len("StridedConv"):]), parts[5], parts[6]
        return state[f"branch.shallow.{e}.{k}.{'conv' if layer == '0' else 'bn'}.{param}"].view(shape)
    if parts[0] == "classifiers":
        return state["head.weight"][int(parts[1])].clone()
    if parts[0] == "rt_classifiers":
        return torch.zeros(shape)
    raise KeyError(key)


def ours_block_key(parts: list[str]) -> str:
    """'0.conv1.weight' / '0.shortcut.0.weight' -> this project's block key ('0.conv1.weight' / '0.downsample.0.weight')."""
    if parts[1] == "shortcut":
        return f"{parts[0]}.downsample.{parts[2]}.{parts[3]}"
    return ".".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", default="/work/.mirror", help="folder holding <owner>+<name>/repo git mirrors")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "fixtures" / "methods_2022_24.json"))
    args = parser.parse_args()
    cpu_shims()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        fixture = {"_about": "Official NCL / MDCS / BCL / SHIKE losses on fixed inputs (see "
                             "tests/parity/generators/gen_methods_2022_24.py)",
                   "torch": torch.__version__,
                   "commits": {name: f"{folder.replace('+', '/')}@{commit}" for name, (folder, commit) in REPOS.items()},
                   "ncl": ncl_cases(Path(args.mirror), scratch), "mdcs": mdcs_cases(Path(args.mirror), scratch),
                   "bcl": bcl_cases(Path(args.mirror), scratch), "shike": shike_cases(Path(args.mirror), scratch)}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _checkout  # the fixtures' shared layout
    _checkout.write_fixture(fixture, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
