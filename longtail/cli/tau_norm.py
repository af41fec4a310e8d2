"""tau-normalise a trained linear classifier: python -m longtail.cli.tau_norm -r CKPT --tau 0.7 [--save_dir DIR].

Runs the ``tau_norm`` stage (methods/tau_norm.py) on the checkpoint's own config and writes a new run directory
``<save_dir>/<name>_taunorm<tau>/seed<S>-<time>/last.pth`` that test.py / test_all_*.py evaluate directly.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from longtail.cli.common import run_tool
from longtail.core.build import checkpoint_path, resolve
from longtail.trainer.run import train
from longtail.utils.checkpoint import load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="tau-normalise the linear head of a checkpoint (Kang et al. 2020) into a "
                                            "new run directory.")
    p.add_argument("-r", "--resume", required=True, help="checkpoint (or run directory) with a linear head "
                                                         "(arch.args.use_norm=false)")
    p.add_argument("--tau", type=float, required=True, help="normalisation strength (0: unchanged, 1: unit-norm classes)")
    p.add_argument("--prefix", default="head.", help="parameter prefix of the classifier (default: head.)")
    p.add_argument("--save_dir", help="where the new run goes (default: the checkpoint config's trainer.save_dir)")
    p.add_argument("-d", "--device", default="cpu", help="device (default cpu: nothing is trained)")
    return p


def run(args: argparse.Namespace) -> int:
    """Build the stage config from the checkpoint and run it."""
    source = checkpoint_path(args.resume)
    config = json.loads(json.dumps(load_checkpoint(source)["config"]))
    config["name"] = f"{config['name']}_taunorm{args.tau:g}"
    config["stage"] = {"type": "tau_norm", "args": {"tau": args.tau, "prefix": args.prefix}}
    config["init_from"] = {"checkpoint": str(source), "strict": True}
    if args.save_dir:
        config["trainer"]["save_dir"] = args.save_dir
    result = train(resolve(config), args.device, quiet=True)
    print(f"wrote {result.checkpoint}; evaluate it with: python test.py -r {result.checkpoint}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m longtail.cli.tau_norm``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
