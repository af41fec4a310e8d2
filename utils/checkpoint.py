"""Checkpoints as plain data: atomic writes, ``weights_only`` loads, clear errors for foreign files."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import CheckpointError

CHECKPOINT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, then rename over the target.

    A crash or Ctrl-C during the write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save({"version": CHECKPOINT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} contains pickled Python objects and cannot be loaded safely with weights_only=True. "
            "Checkpoints of the original BalPoE/SADE/RIDE repos embed a ConfigParser object; re-save only their "
            f"'state_dict' and 'config' as plain data before loading. ({str(exc).splitlines()[0]})"
        ) from None
    except (RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {exc}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this framework (expected keys 'model' and 'config')")
    return state


def load_weights_file(path: str | Path, what: str = "pretrained weights") -> dict[str, torch.Tensor]:
    """Load a plain state dict (e.g. saved from a torchvision model) with ``weights_only=True``.

    Accepts a bare ``{name: tensor}`` dict or one wrapped under ``state_dict`` / ``model``; wrapper prefixes are
    stripped. A missing file raises CheckpointError naming the path.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}. Create it on a machine with the weights, e.g. "
                              "torch.save(torchvision.models.resnet152(weights='IMAGENET1K_V1').state_dict(), PATH), "
                              "and point the config at it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise CheckpointError(f"{path} is not a plain state dict loadable with weights_only=True: "
                              f"{str(exc).splitlines()[0]}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return strip_prefixes(state)


def strip_prefixes(state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...] = ("module.", "_orig_mod.")) -> dict[str, torch.Tensor]:
    """Remove DataParallel/DDP/compile wrapper prefixes so weights load into a bare model."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module inside DataParallel / DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
