"""Compare a regenerated fixture with the committed one: identical bytes, equal values, or the largest differences.

    python tests/parity/generators/compare.py NEW.json [COMMITTED.json] [--rtol 1e-6]

COMMITTED defaults to tests/parity/fixtures/<name of NEW>. Prints one verdict line and, when values differ, every
differing path (numbers: absolute and relative difference; anything else: both values). Exit status 0 when the
files are identical or every number agrees within --rtol / --atol, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def differences(new: Any, old: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Every leaf (or structure) where the two JSON values differ; key order counts as a difference."""
    if isinstance(new, dict) and isinstance(old, dict):
        if list(new) != list(old):
            yield path + " (keys)", list(new), list(old)
        for key in new:
            if key in old:
                yield from differences(new[key], old[key], f"{path}/{key}")
    elif isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            yield path + " (length)", len(new), len(old)
        else:
            for i, (a, b) in enumerate(zip(new, old)):
                yield from differences(a, b, f"{path}[{i}]")
    elif is_number(new) and is_number(old):
        if not (new == old or (math.isnan(new) and math.isnan(old))):
            yield path, new, old
    elif new != old:
        yield path, new, old


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare(new_path: Path, old_path: Path, rtol: float, atol: float,
            label: str | None = None) -> tuple[bool, list[str]]:
    """(agrees, report lines); ``label`` names the committed side in the report (default: its path)."""
    label = label or str(old_path)
    if new_path.read_bytes() == old_path.read_bytes():
        return True, [f"{new_path.name}: identical to {label}"]
    diffs = list(differences(json.loads(new_path.read_text()), json.loads(old_path.read_text())))
    if not diffs:
        return True, [f"{new_path.name}: same values as {label} (formatting differs)"]
    numeric = [(p, a, b) for p, a, b in diffs if is_number(a) and is_number(b)]
    other = [(p, a, b) for p, a, b in diffs if (p, a, b) not in numeric]
    worst_abs = max((abs(a - b) for _, a, b in numeric), default=0.0)
    worst_rel = max((abs(a - b) / max(abs(b), 1e-300) for _, a, b in numeric), default=0.0)
    within = not other and all(abs(a - b) <= atol + rtol * abs(b) for _, a, b in numeric)
    lines = [f"{new_path.name}: {len(diffs)} differing values ({len(numeric)} numbers, max abs {worst_abs:.3g}, "
             f"max rel {worst_rel:.3g}; {'within' if within else 'OUTSIDE'} rtol {rtol:g} / atol {atol:g})"]
    for p, a, b in diffs[:40]:
        lines.append(f"  {p}: new {a!r} committed {b!r}")
    if len(diffs) > 40:
        lines.append(f"  ... {len(diffs) - 40} more")
    return within, lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("new", type=Path)
    p.add_argument("committed", type=Path, nargs="?")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--atol", type=float, default=0.0)
    args = p.parse_args(argv)
    ok, lines = compare(args.new, args.committed or FIXTURES / args.new.name, args.rtol, args.atol)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
