"""Saved logits: one file per checkpoint with everything the test-agnostic evaluation needs, so every protocol,
estimator and calibration metric runs without the model or the images (docs/test_agnostic.md, "Logits files").

A file is a safetensors file (or an .npz with the same keys, for other code bases) holding

* ``test.logits`` (N, E, C) float32 or float16 (E = 1 for a single model; (N, C) is read as E = 1),
  ``test.targets`` (N,) int64, ``train_counts`` (C,) int64: required;
* ``val.logits`` (M, E, C), ``val.targets`` (M,): labelled held-out data from the training distribution (estimators);
* ``fixed.<prior>`` (n,) int64: the index subset of each of the data set's own named test priors;
* ``views.logits`` (V, 2, N, E, C): logits of V pairs of augmented test views (a test-time aggregation's input);

and string metadata (safetensors' header; the .npz key ``metadata`` as one JSON string): ``format``
(``longtail-logits``), ``version``, ``name`` (method/config name), ``seed``, ``checkpoint``, ``test_set`` (JSON:
data set, its arguments, number of images, SHA-1 of the labels), ``evaluation`` (JSON: the config's evaluation
block: many/few thresholds, source_prior, test_time settings), ``fixed_seed``, ``fixed_order`` (JSON list: the
order of the fixed priors), ``views_of`` (the aggregation the
views were collected for). Only the three required tensors are needed; defaults are documented in load_logits.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from longtail.utils.errors import DataError

FORMAT, VERSION = "longtail-logits", "1"
REQUIRED = ("test.logits", "test.targets", "train_counts")


@dataclass
class LogitSet:
    """One checkpoint's logits and labels, from a model pass or a file."""

    expert_logits: torch.Tensor  # (N, E, C) float32
    targets: torch.Tensor  # (N,) int64
    train_counts: list[int]
    name: str
    seed: int = 0
    checkpoint: str = ""
    evaluation: dict[str, Any] = field(default_factory=dict)
    test_set: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, torch.Tensor] = field(default_factory=dict)
    fixed_seed: int = 0
    heldout_logits: torch.Tensor | None = None
    heldout_targets: torch.Tensor | None = None
    view_logits: torch.Tensor | None = None
    views_of: str = ""
    label: str = ""

    @property
    def config(self) -> dict[str, Any]:
        """The part of a run config the evaluation reads (test-time procedures look at name/evaluation/trainer)."""
        return {"name": self.name, "seed": self.seed, "evaluation": self.evaluation, "trainer": {}}


def labels_digest(targets: torch.Tensor) -> str:
    """SHA-1 of the labels as little-endian int64: two files with the same digest share the test set's order."""
    return hashlib.sha1(targets.cpu().to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()


def _tensors(logits: LogitSet, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a file (contiguous, on the CPU)."""
    out = {"test.logits": logits.expert_logits.to(dtype), "test.targets": logits.targets.long(),
           "train_counts": torch.tensor(logits.train_counts, dtype=torch.int64)}
    if logits.heldout_logits is not None:
        out["val.logits"] = logits.heldout_logits.to(dtype)
        out["val.targets"] = logits.heldout_targets.long()  # type: ignore[union-attr]
    if logits.view_logits is not None:
        out["views.logits"] = logits.view_logits.to(dtype)
    out.update({f"fixed.{name}": idx.long() for name, idx in logits.fixed.items()})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _metadata(logits: LogitSet) -> dict[str, str]:
    """The string metadata of a file."""
    test_set = {**logits.test_set, "num_images": int(logits.targets.numel()), "labels_sha1": labels_digest(logits.targets)}
    return {"format": FORMAT, "version": VERSION, "name": logits.name, "seed": str(logits.seed),
            "checkpoint": logits.checkpoint, "test_set": json.dumps(test_set, sort_keys=True),
            "evaluation": json.dumps(logits.evaluation, sort_keys=True), "fixed_seed": str(logits.fixed_seed),
            "fixed_order": json.dumps(list(logits.fixed)),
            "views_of": logits.views_of}


def save_logits(logits: LogitSet, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write one logits file atomically (a temporary file renamed over the target); float16 halves its size."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_tensors(logits, dtype), str(tmp), metadata=_metadata(logits))
    os.replace(tmp, path)
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors or .npz file."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: torch.from_numpy(np.array(data[k])) for k in data.files if k != "metadata"}
            meta = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
        return arrays, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: not a readable logits file (safetensors or .npz): {exc}") from None


def _check(path: Path, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Required keys and consistent shapes; returns the logits as (N, E, C) float32."""
    missing = [k for k in REQUIRED if k not in tensors]
    if missing:
        raise DataError(f"{path}: missing tensor(s) {', '.join(missing)}; a logits file needs test.logits (N, E, C), "
                        "test.targets (N,) and train_counts (C,) (docs/test_agnostic.md)")
    logits = tensors["test.logits"]
    logits = logits[:, None] if logits.dim() == 2 else logits
    n, c = tensors["test.targets"].shape[0], tensors["train_counts"].shape[0]
    if logits.dim() != 3 or logits.shape[0] != n or logits.shape[2] != c:
        raise DataError(f"{path}: test.logits has shape {tuple(tensors['test.logits'].shape)} but (N, E, C) = "
                        f"({n}, E, {c}) is expected from test.targets and train_counts")
    targets = tensors["test.targets"]
    if targets.dtype.is_floating_point or int(targets.min()) < 0 or int(targets.max()) >= c:
        raise DataError(f"{path}: test.targets must be integer labels in [0, {c})")
    return logits.float()


def fixed_priors(tensors: dict[str, torch.Tensor], order: Sequence[str]) -> dict[str, torch.Tensor]:
    """The ``fixed.<prior>`` subsets in the written order (safetensors sorts its keys), then any others."""
    found = {k[len("fixed."):]: v.long() for k, v in tensors.items() if k.startswith("fixed.")}
    return {name: found[name] for name in [*[n for n in order if n in found], *[n for n in found if n not in order]]}


def load_logits(path: str | Path) -> LogitSet:
    """Read a logits file. Defaults for what a foreign file may leave out: name = the file's stem, seed 0, the
    evaluation block {} (shot groups many n > 100, few n < 20, source prior uniform), fixed priors rebuilt from
    the labels with seed 0 (profiles.shifted_subset_indices), no held-out data, no views."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"logits file not found: {path}")
    tensors, meta = _read(path)
    logits = _check(path, tensors)
    if meta.get("format", FORMAT) != FORMAT:
        raise DataError(f"{path}: metadata format is {meta['format']!r}, expected {FORMAT!r}")

    def optional(key: str) -> torch.Tensor | None:
        value = tensors.get(key)
        if value is None:
            return None
        return value[:, None] if key.endswith("logits") and value.dim() == 2 else value

    heldout = optional("val.logits")
    return LogitSet(
        expert_logits=logits, targets=tensors["test.targets"].long(),
        train_counts=[int(v) for v in tensors["train_counts"].tolist()], name=meta.get("name") or path.stem,
        seed=int(meta.get("seed", 0)), checkpoint=meta.get("checkpoint", ""),
        evaluation=json.loads(meta.get("evaluation", "{}")), test_set=json.loads(meta.get("test_set", "{}")),
        fixed=fixed_priors(tensors, json.loads(meta.get("fixed_order", "[]"))),
        fixed_seed=int(meta.get("fixed_seed", 0)), heldout_logits=None if heldout is None else heldout.float(),
        heldout_targets=optional("val.targets"), view_logits=optional("views.logits"),
        views_of=meta.get("views_of", ""), label="")


def logit_file_name(logits: LogitSet, index: int) -> str:
    """<name>-<run folder>.safetensors (run folders are seed<S>-<time>): one file per checkpoint, unique in a folder."""
    run = Path(logits.checkpoint).parent.name if logits.checkpoint else f"seed{logits.seed}-{index}"
    return f"{logits.name}-{run}.safetensors"


def expand_logit_files(patterns: Sequence[str]) -> list[Path]:
    """Files, quoted globs or folders (every *.safetensors / *.npz inside), in order, without duplicates."""
    import glob

    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not matches:
            raise DataError(f"no logits file matches {pattern!r}")
        for match in matches:
            path = Path(match)
            files = sorted([*path.glob("*.safetensors"), *path.glob("*.npz")]) if path.is_dir() else [path]
            if path.is_dir() and not files:
                raise DataError(f"{path} holds no *.safetensors or *.npz logits files")
            found += [f for f in files if f not in found]
    return found
