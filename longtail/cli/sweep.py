"""Sweeps on this machine or a SLURM cluster: lt-sweep run SWEEP.json --launcher slurm; lt-sweep status SWEEP.json.

``run`` turns the sweep file (configs / pipelines x seeds x overrides; longtail/cluster/sweep.py) into jobs, one per
stage of each seed plus one evaluation per grid point, and runs them: ``--launcher local`` as processes here (at
most --max_parallel at once, each with its share of the cores; it waits and prints the table), ``--launcher slurm``
as SLURM jobs through submitit (a stage waits for the jobs it reads; preempted or timed-out jobs save and are
requeued; it returns once submitted). Running it again skips what is done and resumes what was interrupted.
``status`` shows every job (pending, running, done, failed with the last line of its log) and, once all are done,
writes the sweep's table (mean ± std over seeds) to <save_dir>/sweeps/<name>/table.md.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from longtail.cli.common import add_set_argument, positive_int, run_tool, set_overrides
from longtail.cluster.jobs import main_job
from longtail.cluster.launchers import make_launcher
from longtail.cluster.status import all_done, status_frame, status_text, write_table
from longtail.cluster.sweep import Sweep, freeze, load_sweep, read_sweep, read_sweep_file, sweep_folder
from longtail.registry import LAUNCHERS
from longtail.utils.defaults import SAVE_DIR
from longtail.utils.resources import find_shipped

RESOURCE_FLAGS = {"nodes": int, "tasks_per_node": int, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": float,
                  "timeout_min": int, "partition": str, "account": str, "qos": str, "constraint": str}


def add_launch_arguments(p: argparse.ArgumentParser, default_launcher: str | None) -> None:
    """--launcher, --max_parallel and the cluster resource flags (shared with lt-pipeline)."""
    p.add_argument("--launcher", default=default_launcher, choices=LAUNCHERS.names(),
                   help="local: processes on this machine; slurm: SLURM jobs through submitit" +
                        ("" if default_launcher else " (default: one process, stage after stage)"))
    p.add_argument("--max_parallel", type=positive_int, default=1,
                   help="local launcher: jobs at once (each gets usable cores / max_parallel threads; default 1)")
    group = p.add_argument_group("cluster resources (per job; win over the sweep file and the pipeline's stages)")
    for flag, kind in RESOURCE_FLAGS.items():
        group.add_argument(f"--{flag}", type=kind)


def launch_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resources, train options) from the command line (unset flags are left out)."""
    resources = {flag: getattr(args, flag) for flag in RESOURCE_FLAGS if getattr(args, flag) is not None}
    train = {"device": args.device, "limit_batches": args.limit_batches, "limit_val_batches": args.limit_val_batches}
    return resources, {k: v for k, v in train.items() if v is not None}


def launch(sweep: Sweep, launcher: str, max_parallel: int) -> int:
    """Run the sweep with ``launcher``; a local sweep that finished prints and writes its table."""
    code = make_launcher(launcher, max_parallel).launch(sweep)
    if launcher == "slurm":
        print(f"follow it with: lt-sweep status {sweep.folder}")
        return code
    frame = status_frame(sweep)
    print(status_text(frame))
    if code == 0 and all_done(frame) and sweep.evaluate:
        path, text = write_table(sweep)
        print(text)
        print(f"wrote {path}")
    return code


def sweep_of(target: str, save_dir: str) -> Sweep:
    """A launched sweep from its directory or its sweep file (found under ``save_dir``)."""
    path = find_shipped(target, "configs")
    if path.is_dir():
        return read_sweep(path)
    name = str(read_sweep_file(path).get("name") or path.stem)
    return read_sweep(sweep_folder(save_dir, name))


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the tool."""
    p = argparse.ArgumentParser(description="Run a sweep (configs / pipelines x seeds x overrides) as jobs on this "
                                            "machine or a SLURM cluster, follow it, and make its table.")
    commands = p.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="launch (or continue) a sweep")
    run.add_argument("sweep", help="sweep file (JSON or YAML; see docs/clusters.md)")
    run.add_argument("--seeds", help="seeds (1-5, 1,3,7); default: the sweep file's")
    run.add_argument("--save_dir", default=SAVE_DIR, help="runs go here; the sweep in <save_dir>/sweeps/<name>")
    run.add_argument("--data_dir", help="data directory for every stage (data_loader.args.data_dir)")
    run.add_argument("-d", "--device", help="cpu, cuda (default: the sweep file's, else cuda if available)")
    run.add_argument("--limit_batches", type=positive_int, help="cap training batches per epoch (smoke runs)")
    run.add_argument("--limit_val_batches", type=positive_int, help="cap validation batches (smoke runs)")
    add_set_argument(run, "trainer.epochs=2 (every stage) or --set crt:optimizer.args.lr=0.01 (one stage)")
    add_launch_arguments(run, "local")
    status = commands.add_parser("status", help="jobs of a sweep; its table once all are done")
    status.add_argument("sweep", help="sweep file or sweep directory (<save_dir>/sweeps/<name>)")
    status.add_argument("--save_dir", default=SAVE_DIR, help="where the sweep was launched (with a sweep file)")
    job = commands.add_parser("job", help="run one job of a launched sweep (the local launcher's worker)")
    job.add_argument("folder", help="sweep directory")
    job.add_argument("key", help="job key, e.g. ce/seed1/train")
    job.add_argument("--threads", type=positive_int, help="CPU threads")
    return p


def run(args: argparse.Namespace) -> int:
    """Dispatch the sub-command."""
    if args.command == "job":
        return main_job(args.folder, args.key, args.threads)
    if args.command == "status":
        sweep = sweep_of(args.sweep, args.save_dir)
        frame = status_frame(sweep)
        print(status_text(frame))
        if all_done(frame) and sweep.evaluate:
            path, text = write_table(sweep)
            print(text)
            print(f"wrote {path}")
        return 0
    resources, train = launch_options(args)
    overrides = ([("data_loader.args.data_dir", args.data_dir)] if args.data_dir else []) + set_overrides(args)
    sweep = load_sweep(args.sweep, args.save_dir, args.seeds, overrides, resources, train)
    freeze(sweep)
    return launch(sweep, args.launcher, args.max_parallel)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lt-sweep``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
