"""Command line of train.py: python train.py -c CONFIG [--seed N] [overrides] | -r RUN/last.pth."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, Sequence

import torch.multiprocessing as mp

from longtail.cli.common import (add_method_flags, add_set_argument, method_flag_overrides, positive_int, run_tool,
                          set_overrides)
from longtail.trainer.run import config_for_run, dry_run_summary, train
from longtail.trainer.distributed import context_from_env, free_port, processes_to_start, worker_environment
from longtail.utils.config import (SHORTCUT_KEYS, config_leaves, config_sources, explain_key, load_config,
                                   with_run_name)
from longtail.utils.device import resolve_device


def build_parser() -> argparse.ArgumentParser:
    """The train.py argument parser (plus the flags method plugins contribute)."""
    p = argparse.ArgumentParser(description="Train a long-tailed recognition model from a JSON config (any stage: "
                                            "SGD training, calibration, post-hoc transforms).")
    p.add_argument("-c", "--config", help="JSON config file, or a shipped config by name (e.g. fmnist_ir100/ce.json)")
    p.add_argument("-r", "--resume", help="checkpoint to resume exactly (e.g. saved/<name>/<run>/last.pth)")
    p.add_argument("-d", "--device", help="cpu, cuda, cuda:N or a GPU list like 0,1 (default: cuda if available)")
    p.add_argument("--seed", type=int, help="training seed (init, order, augmentation, mixup); overrides 'seed'")
    p.add_argument("--epochs", type=positive_int, help="overrides trainer.epochs")
    p.add_argument("--batch_size", type=positive_int, help="overrides data_loader.args.batch_size")
    p.add_argument("--lr", type=float, help="overrides optimizer.args.lr")
    p.add_argument("--num_experts", type=positive_int, help="overrides arch.args.num_experts")
    p.add_argument("--data_dir", help="overrides data_loader.args.data_dir")
    p.add_argument("--save_dir", help="overrides trainer.save_dir (runs go to <save_dir>/<name>/seed<S>-<time>/)")
    p.add_argument("--run_dir", help="train into exactly this folder instead of <save_dir>/<name>/seed<S>-<time>/ "
                                     "(for scripts that evaluate the run they trained)")
    p.add_argument("--name", help="run name (default: the config's name, plus a suffix naming the overrides that change "
                                  "the training, e.g. cifar100_ir100_ce-num_experts7-lr0.05)")
    add_set_argument(p)
    p.add_argument("--dry_run", action="store_true", help="build everything, print data/model summary and exit")
    p.add_argument("--print_config", action="store_true",
                   help="print the fully resolved config (every default filled in, derived values resolved) and exit")
    p.add_argument("--explain", metavar="KEY", help="say which file or override set KEY (e.g. "
                   "data_loader.args.batch_size) and its resolved value, then exit")
    p.add_argument("--limit_batches", type=positive_int, help="cap the training batches per epoch (smoke runs)")
    p.add_argument("--limit_val_batches", type=positive_int, help="cap the validation batches (smoke runs)")
    p.add_argument("--threads", type=positive_int, help="CPU threads of this process (default: the usable cores minus "
                                                        "what other processes keep busy; printed at start)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or console log (train.log is still written)")
    p.add_argument("--nproc", type=positive_int, help="start this many DDP processes on this machine (default: one "
                                                      "per GPU when n_gpu > 1 and several GPUs are visible; gloo on "
                                                      "CPU); not needed under torchrun")
    add_method_flags(p, "train")
    return p


def overrides_from_args(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """Shortcut flags, method flags and --set pairs as (dotted key, value), in that order."""
    pairs = []
    for flag, path in SHORTCUT_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            pairs.append((path, value))
    return pairs + method_flag_overrides(args, "train") + set_overrides(args)


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Resolve the config and run (or dry-run) it; several processes are started here when the run asks for DDP
    without a launcher."""
    raw = load_config(args.config) if args.config else None
    pairs = overrides_from_args(args)
    if raw is not None and not args.resume:
        pairs = with_run_name(raw, pairs, args.name)
    config, resume_state = config_for_run(raw, args.resume, pairs)
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    if args.explain:
        sources: dict[str, list[tuple[str, Any]]] = {}
        if args.resume:  # the checkpoint's own config first; a -c file then replaces whole top-level sections
            for key, value in config_leaves(resume_state["config"]):
                sources[key] = [(f"{args.resume} (its stored config)", value)]
        for key, entries in (config_sources(args.config) if args.config else {}).items():
            sources[key] = sources.get(key, []) + entries
        print(explain_key(args.explain, config, sources, pairs))
        return 0
    if args.dry_run:
        if context_from_env().is_primary:
            print(dry_run_summary(config, resolve_device(args.device)))
        return 0
    nproc = processes_to_start(config, resolve_device(args.device), args.nproc)
    if nproc > 1:
        return launch_processes(argv, nproc)
    result = train(config, args.device, args.resume, resume_state, args.limit_batches, args.limit_val_batches,
                   args.quiet, threads=args.threads, run_dir=args.run_dir)
    return 130 if result.interrupted else 0


def _ddp_worker(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """One process of a job started by :func:`launch_processes`: torchrun's environment, then train.py itself."""
    os.environ.update(worker_environment(rank, world_size, port))
    code = main(argv)
    if code:
        raise SystemExit(code)


def launch_processes(argv: Sequence[str], nproc: int) -> int:
    """Run train.py in ``nproc`` fresh processes of one DDP job (rank 0 logs and writes); Ctrl-C reaches every
    process, which stop together and save, as under torchrun. Returns the job's exit code."""
    print(f"starting {nproc} DDP processes (ranks 0..{nproc - 1}; rank 0 logs and writes checkpoints)", flush=True)
    # the workers handle Ctrl-C (they stop together and save); the launcher only waits. A Python handler, unlike
    # SIG_IGN, is not inherited by the fresh worker processes.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        mp.start_processes(_ddp_worker, args=(nproc, free_port(), list(argv)), nprocs=nproc, start_method="spawn")
    except mp.ProcessExitedException as exc:
        return exc.exit_code if exc.exit_code and exc.exit_code > 0 else 1
    except mp.ProcessRaisedException as exc:
        print(f"error: a training process failed:\n{exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of train.py."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_tool(build_parser(), lambda args: run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
