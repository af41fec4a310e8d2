"""The official list files shipped in data_txt/ (SHA-256 manifest checked when a list is read) and the ImageNet-LT
training class counts (the training list itself is not shipped)."""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from longtail.data_loader.datasets import data_warning
from longtail.utils.errors import DataError
from longtail.utils.resources import shipped_dir

DATA_TXT = shipped_dir("data_txt")
MANIFEST = DATA_TXT / "MANIFEST.sha256"


@functools.lru_cache(maxsize=1)
def official_digests() -> dict[str, str]:
    """File name -> SHA-256 of every official list in data_txt/MANIFEST.sha256 (empty when it is missing)."""
    if not MANIFEST.is_file():
        return {}
    digests = {}
    for line in MANIFEST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split(maxsplit=1)
            digests[Path(name).name] = digest
    return digests


def check_official(path: Path, content: bytes) -> bool:
    """Warn (once, naming the file) when a file named like an official list differs from it; True when identical
    to the official file or not an official name."""
    expected = official_digests().get(path.name)
    if expected is None:
        return True
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        data_warning(path, f"differs from the official {path.name} shipped in data_txt/ (SHA-256 {actual[:12]}... "
                           f"instead of {expected[:12]}...); results may not be comparable with published numbers")
        return False
    return True


def read_class_counts(path: str | Path) -> list[int]:
    """A counts file (``label count`` lines, '#' comments) -> counts indexed by label."""
    path = Path(path)
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise DataError(f"{path}:{number}: expected '<label> <count>', got {line!r}")
        pairs.append((int(parts[0]), int(parts[1])))
    counts = np.zeros(max(label for label, _ in pairs) + 1, dtype=np.int64)
    for label, count in pairs:
        counts[label] = count
    return counts.tolist()
