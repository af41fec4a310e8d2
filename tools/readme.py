"""Regenerate (or check) the README's generated blocks: every table between

    <!-- generated: python -m tools.<tool> ARGS -->
    ...
    <!-- end generated -->

is the printed output of that shipped tool on committed files, so the README's numbers come from the tools.

python -m tools.readme [README.md ...]            rewrite the blocks in place
python -m tools.readme --check [README.md ...]   exit 1 naming every stale block (run by the test suite)
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import sys
from pathlib import Path
from typing import Sequence

from longtail.cli.common import run_tool
from longtail.utils.errors import ConfigError, DataError

BLOCK = re.compile(r"(<!-- generated: (?P<command>.+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)


def tool_output(command: str) -> str:
    """Run ``python -m tools.<name> ARGS`` or ``python -m longtail.cli.<name> ARGS`` in this process and return
    what it printed."""
    words = shlex.split(command)
    if words[:2] != ["python", "-m"] or len(words) < 3 or not re.fullmatch(r"(tools|longtail\.cli)\.\w+", words[2]):
        raise ConfigError("generated block command must be 'python -m tools.<name> ...' or 'python -m "
                          f"longtail.cli.<name> ...', got {command!r}")
    module = importlib.import_module(words[2])
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = module.main(words[3:])
    if code:
        raise DataError(f"{command!r} failed (exit code {code})")
    return buffer.getvalue().strip() + "\n"


def refresh(text: str) -> tuple[str, list[str]]:
    """The text with every generated block regenerated, and the commands whose block changed."""
    stale: list[str] = []

    def replace(match: re.Match[str]) -> str:
        body = tool_output(match.group("command"))
        if body != match.group("body"):
            stale.append(match.group("command"))
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), stale


DOCUMENTS = ["README.md", *sorted(str(p) for p in Path("docs").glob("*.md"))]


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="Regenerate or check the generated tables of the README and docs/.")
    p.add_argument("files", nargs="*", default=DOCUMENTS, help="Markdown files with generated blocks (default: the README "
                                                                 "and docs/*.md)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is out of date")
    return p


def run(args: argparse.Namespace) -> int:
    """Refresh or check every file."""
    failed = False
    for name in args.files:
        path = Path(name)
        text = path.read_text()
        new, stale = refresh(text)
        if args.check:
            for command in stale:
                print(f"{path}: stale generated block: {command} (run python -m tools.readme {path})")
            failed |= bool(stale)
        elif new != text:
            path.write_text(new)
            print(f"{path}: regenerated {len(stale)} block(s)")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tools.readme``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
