"""``python -m longtail.cli.protocols``: list the test-prior protocols (with their default settings) and the
post-hoc corrections / label-shift estimators; and the test_all_*.py flags of the shifted-prior evaluation
(evaluation/shift.py, docs/test_agnostic.md):

--protocol fixed,dirichlet,dirichlet_sym,tweak_one,severity   families of test priors (default: fixed)
--protocol_set dirichlet.trials=3                            a protocol's settings (repeatable, values as JSON)
--protocol_seed 0                                             seed of the sampled test sets (same for every method)
--estimators em,bbse,rlls,ts_em,vs_em,bcts_em,ts              label-shift estimators (plus none and oracle)
--logits FILE|DIR|GLOB ...                                    evaluate saved logits instead of checkpoints (-r)
--save_logits DIR, --logits_dtype float16                     write one logits file per checkpoint
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from longtail.cli.common import run_tool
from longtail.data_loader.shift_protocols import protocol_settings
from longtail.evaluation.shift import ESTIMATOR_ALIASES, ShiftOptions
from longtail.registry import POSTHOC, TEST_PROTOCOLS
from longtail.utils.config import parse_set_items
from longtail.utils.errors import ConfigError


def split_names(values: list[str] | None) -> list[str]:
    """['a,b', 'c'] -> ['a', 'b', 'c']."""
    return [name.strip() for value in values or [] for name in value.split(",") if name.strip()]


def add_shift_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags above (test_all_*.py only)."""
    parser.add_argument("--protocol", nargs="+", metavar="NAME",
                        help="families of shifted test priors, several at once (space- or comma-separated): fixed "
                             "(default: the data set's named priors), dirichlet (DirMixE's protocol), dirichlet_sym, "
                             "tweak_one, severity (docs/test_agnostic.md)")
    parser.add_argument("--protocol_set", action="append", default=[], metavar="PROTOCOL.KEY=VALUE",
                        help="a protocol setting, e.g. dirichlet.trials=3 or severity.ratios=[2,10,100] (repeatable)")
    parser.add_argument("--protocol_seed", type=int, default=0,
                        help="seed of the sampled test sets (default 0; the same sets for every method and run)")
    parser.add_argument("--estimators", nargs="+", metavar="NAME",
                        help="label-shift estimators to compare with no correction and the oracle: em, bbse, rlls, "
                             "ts_em, vs_em, bcts_em (and ts: temperature scaling only); all but em need held-out "
                             "data (data_loader.args.holdout_fraction > 0 when training, or a 'val' split)")
    parser.add_argument("--logits", nargs="+", metavar="FILE",
                        help="evaluate saved logits files (or folders / quoted globs of them) instead of checkpoints")
    parser.add_argument("--save_logits", metavar="DIR",
                        help="write each checkpoint's logits (test, held-out, test-time views) to DIR/<name>-seed<S>-"
                             "<run>.safetensors")
    parser.add_argument("--logits_dtype", choices=("float32", "float16"), default="float32",
                        help="dtype of the written logits (float16 halves the files; float32 evaluates exactly as "
                             "on the fly)")


def wants_shift(args: argparse.Namespace) -> bool:
    """True when any of the flags asks for more than the fixed-prior evaluation of checkpoints."""
    protocols = split_names(getattr(args, "protocol", None))
    return bool((protocols and protocols != ["fixed"]) or getattr(args, "estimators", None)
                or getattr(args, "logits", None) or getattr(args, "save_logits", None) or args.protocol_set)


def protocol_settings_from(items: list[str]) -> dict[str, dict[str, Any]]:
    """'dirichlet.trials=3' -> {'dirichlet': {'trials': 3}}."""
    settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_set_items(items, "--protocol_set"):
        if "." not in key:
            raise ConfigError(f"--protocol_set {key}=...: name the protocol and the setting, e.g. dirichlet.trials=3")
        protocol, name = key.split(".", 1)
        settings.setdefault(protocol, {})[name] = value
    return settings


def shift_options_from_args(args: argparse.Namespace) -> ShiftOptions:
    """The ShiftOptions a parsed command line asks for."""
    return ShiftOptions(protocols=split_names(args.protocol) or ["fixed"],
                        settings=protocol_settings_from(args.protocol_set), estimators=split_names(args.estimators),
                        seed=args.protocol_seed, logit_files=list(args.logits or []), save_logits=args.save_logits,
                        logits_dtype=args.logits_dtype)


def catalogue() -> str:
    """Every registered protocol with its default settings, and every correction with its one-line description."""
    lines = ["test-prior protocols (--protocol; settings: --protocol_set NAME.KEY=VALUE):"]
    for name in TEST_PROTOCOLS.names():
        lines.append(f"  {name:14s} {json.dumps(protocol_settings(name))}")
    lines.append("post-hoc corrections and estimators (--posthoc_bias_correction / --estimators):")
    aliases = {v: k for k, v in ESTIMATOR_ALIASES.items()}
    for name in POSTHOC.names():
        doc = (POSTHOC.get(name).__doc__ or "").strip().splitlines()[0]
        shown = f"{name} ({aliases[name]})" if name in aliases else name
        lines.append(f"  {shown:14s} {doc}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m longtail.cli.protocols``: print the catalogue."""
    parser = argparse.ArgumentParser(description="List the test-prior protocols and the label-shift corrections "
                                                 "of test_all_*.py (docs/test_agnostic.md).")
    return run_tool(parser, lambda args: print(catalogue()) or 0, argv)


if __name__ == "__main__":
    sys.exit(main())
