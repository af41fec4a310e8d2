"""Where the shipped configs and official lists are: the repository's ``configs/`` and ``data_txt/`` in a clone, the
package data ``longtail/configs`` and ``longtail/data_txt`` in an installed wheel (setup.py maps one onto the other).

Paths written as in the docs (``configs/fmnist_ir100/balpoe.json``, ``data_txt/ImageNet_LT``) work from any folder:
a path that does not exist where it is given, relative to the working directory, is looked up in the shipped copy.
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # longtail/
SHIPPED = ("configs", "data_txt")


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``configs`` or ``data_txt`` (package data when installed, else the repository's)."""
    if kind not in SHIPPED:
        raise ValueError(f"shipped folders are {SHIPPED}, not {kind!r}")
    installed = PACKAGE_DIR / kind
    return installed if installed.is_dir() else PACKAGE_DIR.parent / kind


def find_shipped(path: str | Path, kind: str) -> Path:
    """``path`` itself when it exists; else the same path inside the shipped ``kind`` folder (with or without the
    leading ``configs/`` / ``data_txt/``) when that exists; else ``path`` unchanged (the caller reports it)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts and path.parts[0] == kind else path.parts
    candidate = shipped_dir(kind).joinpath(*parts) if parts else shipped_dir(kind)
    return candidate if candidate.exists() else path
