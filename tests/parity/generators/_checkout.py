"""Shared helpers of the parity generators: the original code at a pinned commit, outside the project, run on a CPU.

Nothing here is imported by the test suite or by the installed package. A generator pins its repositories as
``{"owner/name": "<40-hex commit>"}`` and calls :func:`checkouts`, which puts a sparse checkout (``*.py`` and
``*.json`` only: the code and its configs) of each repository at its commit into a scratch folder OUTSIDE the
project. The source of each checkout is, in this order: ``--repo-path OWNER/NAME=PATH`` (a local clone or a bare
mirror), ``--mirrors DIR`` / ``$PARITY_MIRRORS`` (a folder of mirrors named ``owner+name/repo``, ``owner+name`` or
``owner/name``), else ``https://github.com/OWNER/NAME``. The original modules are imported from the checkout with
:func:`import_original` after the runtime patches (:func:`cpu_patches`, :func:`cifar_integrity_off`) were applied;
none of their code is copied anywhere.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

GENERATORS = Path(__file__).resolve().parent
FIXTURES = GENERATORS.parent / "fixtures"
PROJECT_ROOT = GENERATORS.parents[2]
SPARSE_PATTERNS = ("*.py", "*.json")  # code and configs; big data lists (data_txt/) are never needed


def parser(doc: str, fixture: str, pinned: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line every generator shares: --out, --repo-path, --mirrors, --scratch."""
    first_line = doc.strip().splitlines()[0]
    epilog = "pinned commits: " + ", ".join(f"{repo}@{commit}" for repo, commit in pinned.items())
    p = argparse.ArgumentParser(description=first_line, epilog=epilog)
    p.add_argument("--out", type=Path, default=FIXTURES / fixture, help="fixture file to write (default: %(default)s)")
    p.add_argument("--repo-path", action="append", default=[], metavar="OWNER/NAME=PATH",
                   help="local clone or bare mirror of one original repository (repeatable); a bare PATH is "
                        "accepted when the generator uses one repository")
    p.add_argument("--mirrors", type=Path, default=os.environ.get("PARITY_MIRRORS"),
                   help="folder of mirrors (owner+name/repo, owner+name or owner/name); default $PARITY_MIRRORS")
    p.add_argument("--scratch", type=Path,
                   default=Path(os.environ.get("PARITY_SCRATCH", Path(tempfile.gettempdir()) / "longtail-parity")),
                   help="scratch folder outside the project for checkouts and extra packages "
                        "(default $PARITY_SCRATCH or %(default)s)")
    return p


def repo_sources(args: argparse.Namespace, pinned: Mapping[str, str]) -> dict[str, str]:
    """Where each pinned repository is cloned from (a local path or its GitHub address)."""
    explicit: dict[str, str] = {}
    for item in args.repo_path:
        repo, sep, path = item.rpartition("=")
        if not sep:
            if len(pinned) != 1:
                raise SystemExit(f"--repo-path {item}: this generator uses {sorted(pinned)}; write OWNER/NAME=PATH")
            repo, path = next(iter(pinned)), item
        if repo not in pinned:
            raise SystemExit(f"--repo-path {item}: {repo} is not one of this generator's repositories {sorted(pinned)}")
        explicit[repo] = str(Path(path).expanduser().resolve())
    sources = {}
    for repo in pinned:
        sources[repo] = explicit.get(repo) or mirror_of(repo, args.mirrors) or f"https://github.com/{repo}"
    return sources


def mirror_of(repo: str, mirrors: Path | None) -> str | None:
    """The mirror of ``repo`` inside a mirrors folder, if there is one."""
    if mirrors is None:
        return None
    owner, name = repo.split("/")
    for candidate in (Path(mirrors) / f"{owner}+{name}" / "repo", Path(mirrors) / f"{owner}+{name}",
                      Path(mirrors) / owner / name):
        if candidate.is_dir():
            return str(candidate.resolve())
    return None


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git quietly; a failure stops the generator with git's message."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout.strip()


def outside_project(path: Path) -> Path:
    """Refuse scratch folders inside this repository (the original code must never land in the project)."""
    path = path.expanduser().resolve()
    if path == PROJECT_ROOT or PROJECT_ROOT in path.parents:
        raise SystemExit(f"--scratch {path} is inside the project {PROJECT_ROOT}: choose a folder outside it")
    return path


def checkout(repo: str, commit: str, source: str, scratch: Path) -> Path:
    """A sparse work tree of ``repo`` at exactly ``commit`` under ``scratch`` (reused when already there)."""
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise SystemExit(f"{repo}: pinned commit {commit!r} is not a full 40-hex commit")
    dest = outside_project(scratch) / f"{repo.replace('/', '+')}@{commit[:12]}"
    if (dest / ".git").is_dir() and git("rev-parse", "HEAD", cwd=dest) == commit:
        if git("status", "--porcelain", "--untracked-files=no", cwd=dest):
            raise SystemExit(f"{dest} has local changes: remove it (the originals must run unmodified)")
        return dest
    if dest.exists():
        raise SystemExit(f"{dest} exists but is not a checkout of {repo}@{commit}: remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    clone = ["clone", "--quiet", "--no-checkout"]
    if source.startswith(("https://", "git@")):
        clone.append("--filter=blob:none")  # fetch only the blobs the sparse checkout needs
    try:
        git(*clone, source, str(dest))
        git("config", "core.sparseCheckout", "true", cwd=dest)
        (dest / ".git" / "info").mkdir(exist_ok=True)
        (dest / ".git" / "info" / "sparse-checkout").write_text("\n".join(SPARSE_PATTERNS) + "\n")
        if subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=dest,
                          capture_output=True).returncode != 0:
            raise SystemExit(f"{source} does not contain {repo}@{commit}: fetch a newer mirror or clone from GitHub")
        git("checkout", "--quiet", "--detach", commit, cwd=dest)
    except SystemExit:
        shutil.rmtree(dest, ignore_errors=True)  # no half-made checkout left to trip the next run
        raise
    got = git("rev-parse", "HEAD", cwd=dest)
    if got != commit:
        raise SystemExit(f"{dest}: HEAD is {got}, expected the pinned {commit}")
    return dest


def checkouts(args: argparse.Namespace, pinned: Mapping[str, str]) -> dict[str, Path]:
    """Every pinned repository checked out at its commit; prints where each came from."""
    roots = {}
    for repo, source in repo_sources(args, pinned).items():
        roots[repo] = checkout(repo, pinned[repo], source, args.scratch)
        print(f"{repo}@{pinned[repo][:12]} from {source} -> {roots[repo]}", file=sys.stderr)
    return roots


def top_level_names(root: Path) -> set[str]:
    """Module names a checkout defines at its top level (model, utils, data_loader, test, ...)."""
    names = set()
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_dir():
            names.add(entry.name)
    return names


def import_original(root: Path, name: str) -> types.ModuleType:
    """Import module ``name`` of one checkout; the repositories share names (model, utils, ...), so every module of
    the checkout is imported afresh and removed from ``sys.modules`` afterwards (what was there is restored)."""
    tops = top_level_names(root)
    owned = lambda key: key.split(".")[0] in tops  # noqa: E731
    saved = {key: sys.modules.pop(key) for key in list(sys.modules) if owned(key)}
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
        for key in [key for key in sys.modules if owned(key)]:
            del sys.modules[key]
        sys.modules.update(saved)


def cpu_patches() -> None:
    """Let CUDA-only original code run on a CPU: ``Tensor.cuda`` and ``Module.cuda`` return their object."""
    import torch

    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[assignment]
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[assignment]


def cifar_integrity_off() -> None:
    """torchvision's CIFAR classes check the MD5 of the official files: fake pickles must pass."""
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda *args, **kwargs: True
    cifar.CIFAR10._check_integrity = lambda self: True  # type: ignore[method-assign]


def require(requirements: Mapping[str, str], scratch: Path) -> None:
    """Make extra packages the originals import (e.g. scipy) importable WITHOUT touching the project's environment:
    missing ones are pip-installed (no dependencies) into ``<scratch>/site-packages``, appended to sys.path."""
    site = outside_project(scratch) / "site-packages"
    if site.is_dir() and str(site) not in sys.path:
        sys.path.append(str(site))
    missing = []
    for module, spec in requirements.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(spec)
    if not missing:
        return
    site.mkdir(parents=True, exist_ok=True)
    print(f"installing {' '.join(missing)} into {site}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), *missing],
                   check=True)
    if str(site) not in sys.path:
        sys.path.append(str(site))
    importlib.invalidate_caches()
    for module in requirements:
        importlib.import_module(module)


def config_of(root: Path, path: str) -> dict[str, Any]:
    """A JSON config of the checkout."""
    return json.loads((root / path).read_text())


def sha256_i8(values: Iterable[int] | np.ndarray) -> str:
    """SHA-256 of integers as little-endian int64 (how the fixtures fingerprint label and index lists)."""
    return hashlib.sha256(np.asarray(values, dtype="<i8").tobytes()).hexdigest()


def lt_recipe_labels(num_classes: int, per_class: int, seed: int) -> np.ndarray:
    """``RandomState(seed).permutation(repeat(arange(C), per_class))``: the fake CIFAR label orders."""
    return np.random.RandomState(seed).permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)


def indexed_images(n: int) -> np.ndarray:
    """Fake CIFAR images: (n, 3072) uint8 rows whose first two bytes hold the row index (big-endian)."""
    data = np.zeros((n, 3072), np.uint8)
    data[:, 0], data[:, 1] = np.arange(n) // 256, np.arange(n) % 256
    return data


def image_indices(data: np.ndarray) -> list[int]:
    """The indices back from torchvision's (N, 32, 32, 3) images: flat bytes 0 and 1 are pixels (0, 0) and (0, 1)
    of channel 0."""
    return (data[:, 0, 0, 0].astype(np.int64) * 256 + data[:, 0, 1, 0]).tolist()


NUMBER = r"(?:-?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|Infinity)|NaN)"
NUMBER_LIST = re.compile(r"\[\n\s*(" + NUMBER + r"(?:,\n\s*" + NUMBER + r")*)\n\s*\]")


def dumps_fixture(obj: Any) -> str:
    """The fixtures' layout: ``json.dumps(indent=1)`` with every list of plain numbers on one line."""
    text = json.dumps(obj, indent=1)
    return NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n")) + "]", text) + "\n"


def write_fixture(obj: Any, out: Path) -> None:
    """Write the fixture file (parent folders created)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps_fixture(obj))
    print(f"wrote {out}", file=sys.stderr)
