"""What every command-line tool shares: the error wrapper (--debug), --set overrides and method-owned flags."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from longtail.registry import cli_flags
from longtail.utils.config import parse_set_items
from longtail.utils.errors import FrameworkError


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_set_argument(parser: argparse.ArgumentParser, example: str = "combiner.args.alpha=0.2") -> None:
    """``--set KEY=VALUE`` (repeatable): override any config key."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override any config key, e.g. --set {example} (repeatable; values parsed as JSON)")


def add_method_flags(parser: argparse.ArgumentParser, tool: str) -> None:
    """Flags that method plugins contribute to ``tool`` (e.g. RIDE's --router_threshold)."""
    for flag in cli_flags(tool):
        parser.add_argument(*flag.flags, dest=flag.dest, **flag.kwargs)


def method_flag_overrides(args: argparse.Namespace, tool: str) -> list[tuple[str, Any]]:
    """Config overrides requested through method-contributed flags (flags left at their default give none)."""
    pairs: list[tuple[str, Any]] = []
    for flag in cli_flags(tool):
        value = getattr(args, flag.dest, None)
        if value is not None and value is not False:  # 0.0 is a value, not "flag absent"
            pairs += flag.apply(args, value)
    return pairs


def set_overrides(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The parsed ``--set`` pairs."""
    return parse_set_items(getattr(args, "set", []) or [])


def run_tool(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int | None],
             argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; the framework's own errors become one ``error:`` line and exit code 2 (``--debug``
    shows their traceback). Any other exception is a bug and keeps its traceback."""
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    args = parser.parse_args(argv)
    try:
        return int(run(args) or 0)
    except FrameworkError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
