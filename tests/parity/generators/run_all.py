"""Run every parity generator that uses the shared checkout helper, each in its own process, and compare.

    python tests/parity/generators/run_all.py [--mirrors DIR] [--scratch DIR] [--out-dir DIR] [--only NAME ...]

Each ``gen_*.py`` here that imports ``_checkout`` is run as ``python gen_x.py --out OUT_DIR/<fixture> [--mirrors ...]
[--scratch ...]``; the fixture name is the one its docstring's first line names. With ``--out-dir`` left out the
committed fixtures are overwritten in place (check ``git diff`` afterwards). Every written file is then compared with
the committed fixture (``compare.py``). Generators with their own command line are listed as skipped: run them as
their docstring says. Exit status 1 when a generator fails or a fixture differs beyond ``--rtol``.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

GENERATORS = Path(__file__).resolve().parent
FIXTURES = GENERATORS.parent / "fixtures"
sys.path.insert(0, str(GENERATORS))
from compare import compare  # noqa: E402

FIXTURE_IN_DOCSTRING = re.compile(r"tests/parity/fixtures/([\w.-]+\.json)")


def fixture_of(generator: Path) -> str | None:
    """The fixture a generator writes: the file its docstring's first line names."""
    doc = ast.get_docstring(ast.parse(generator.read_text())) or ""
    match = FIXTURE_IN_DOCSTRING.search(doc.splitlines()[0] if doc else "")
    return match.group(1) if match else None


def uses_shared_helper(generator: Path) -> bool:
    return re.search(r"^import _checkout\b", generator.read_text(), flags=re.M) is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mirrors", help="folder of mirrors (passed on; default $PARITY_MIRRORS)")
    p.add_argument("--scratch", help="scratch folder outside the project (passed on; default $PARITY_SCRATCH)")
    p.add_argument("--out-dir", type=Path, default=None, help="write here instead of over the committed fixtures")
    p.add_argument("--only", nargs="*", default=None, help="generator names (gen_x or x) to run")
    p.add_argument("--rtol", type=float, default=0.0, help="tolerance of the comparison (default: exact)")
    args = p.parse_args(argv)
    out_dir = args.out_dir or FIXTURES
    wanted = {name.removeprefix("gen_").removesuffix(".py") for name in args.only} if args.only else None
    failures = 0
    for generator in sorted(GENERATORS.glob("gen_*.py")):
        name = generator.stem.removeprefix("gen_")
        if wanted is not None and name not in wanted:
            continue
        fixture = fixture_of(generator)
        if fixture is None or not uses_shared_helper(generator):
            print(f"skipped {generator.name}: own command line (see its docstring)")
            continue
        out = out_dir / fixture
        before = (FIXTURES / fixture).read_bytes() if (FIXTURES / fixture).exists() else None
        command = [sys.executable, str(generator), "--out", str(out)]
        command += ["--mirrors", args.mirrors] if args.mirrors else []
        command += ["--scratch", args.scratch] if args.scratch else []
        print(f"running {generator.name} -> {out}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if result.returncode != 0:
            print(f"FAILED {generator.name} (exit {result.returncode}):\n{result.stderr[-3000:]}")
            failures += 1
            continue
        print("\n".join("  " + line for line in result.stderr.splitlines() if " from " in line and " -> " in line))
        if before is None:
            print(f"{fixture}: new fixture (nothing committed to compare with)")
            continue
        committed = FIXTURES / fixture
        if out.resolve() == committed.resolve():  # compare with what was there before the overwrite
            previous = out_dir / f".{fixture}.before"
            previous.write_bytes(before)
            ok, lines = compare(out, previous, args.rtol, 0.0, label="the committed fixture")
            previous.unlink()
        else:
            ok, lines = compare(out, committed, args.rtol, 0.0)
        print("\n".join(lines))
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
