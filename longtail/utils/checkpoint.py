"""Checkpoints as plain data: atomic writes, ``weights_only`` loads, clear errors for foreign files."""
from __future__ import annotations

import os
import pickle
import pickletools
import zipfile
import tempfile
from pathlib import Path
from typing import Any

import torch

from longtail.utils.errors import CheckpointError

CHECKPOINT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same folder, fsync, then rename over the target.

    A crash or Ctrl-C during the write leaves the previous file at ``path`` untouched.
    """
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save({"version": CHECKPOINT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except (OSError, RuntimeError) as exc:  # disk full, quota, permissions: torch reports some as RuntimeError
        _remove(tmp_name)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"could not write {path}: {reason}") from None
    except BaseException:
        _remove(tmp_name)
        raise
    return path


def _remove(path: str | None) -> None:
    """Delete a temporary file if it exists."""
    if path is not None and os.path.exists(path):
        os.unlink(path)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete leftovers of interrupted atomic writes (``.<name>.*.tmp``, e.g. after a SIGKILL); returns them."""
    stale = sorted(Path(folder).glob(".*.pth.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if not pickled_globals(path):  # random bytes also fail the weights-only unpickler
            raise CheckpointError(f"{path} is not a readable checkpoint (truncated, corrupt or not a PyTorch file)") from None
        raise CheckpointError(
            f"{path} contains pickled Python objects and cannot be loaded safely with weights_only=True. "
            "Checkpoints of the original research repositories embed such objects (a ConfigParser); evaluate them "
            "with test_all_*.py -r FILE -c CONFIG, which reads only their weights (supported code bases: "
            "docs/methods.md)."
        ) from None
    except Exception as exc:  # truncated, random bytes, another format: torch raises many different types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): {reason}") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this framework (expected keys 'model' and 'config')")
    return state


def pickle_streams(path: str | Path) -> list[bytes]:
    """The pickle byte streams of a file: ``*/data.pkl`` of a torch zip checkpoint, else the file itself."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
    return [path.read_bytes()]


def pickled_globals(path: str | Path) -> list[str]:
    """``module.name`` of every class or function a pickle refers to, read without executing anything (empty when
    the file is not a readable pickle)."""
    names: list[str] = []
    try:
        for stream in pickle_streams(path):
            strings: list[str] = []
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle (random bytes, truncated stream)
        return []
    return names


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
    except Exception as exc:  # unpicklable objects, truncated or foreign files
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


def training_progress(state: dict[str, Any]) -> tuple[int, int, int]:
    """(epochs completed, steps into the next epoch, epochs the run was configured for) of a checkpoint."""
    progress = state.get("progress")
    if isinstance(progress, dict):
        return int(progress["epoch"]), int(progress["step"]), int(progress["epochs"])
    config = state.get("config") or {}
    total = int((config.get("trainer") or {}).get("epochs", state.get("epoch", 0)))  # checkpoints before "progress"
    return int(state.get("epoch", 0)), int(state.get("step", 0)), total


def run_status(state: dict[str, Any] | None, path: str | Path) -> str:
    """'finished', 'snapshot: epoch E of N' (an intermediate file of a run that finished, e.g. checkpoint-epoch100.pth
    or best.pth), 'unfinished: epoch E of N[, interrupted after step S]', or 'external' (another code base's file).

    A run is finished when its last.pth holds every configured epoch; tables refuse unfinished runs by default."""
    if state is None:
        return "external"
    epoch, step, total = training_progress(state)
    if epoch >= total and step == 0:
        return "finished"
    where = f"epoch {epoch} of {total}" + (f", interrupted after step {step} of epoch {epoch + 1}" if step else "")
    path = Path(path)
    sibling = path.parent / "last.pth"
    if path.name != "last.pth" and sibling.is_file():
        try:
            last = torch.load(sibling, map_location="cpu", weights_only=True)
        except Exception:  # unreadable: the run cannot be shown to have finished
            last = None
        if last is not None and run_status(last, sibling) == "finished":
            return f"snapshot: {where}"
    return f"unfinished: {where}"
