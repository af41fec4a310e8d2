"""One job of a sweep, the same on every launcher: train one stage of one seed (skipped when finished, resumed when
interrupted) or evaluate one variant; its record (``<sweep dir>/jobs/<key>.json``) says when it started and ended,
where and how it ended.

Stop signals (Ctrl-C, and SLURM's SIGTERM / SIGUSR2 before a preemption or the time limit) reach the trainer's
StopRequest: the run saves an exact mid-epoch checkpoint and returns. Inside a SLURM job the job then goes through
submitit's checkpointing protocol (:class:`SweepJob.checkpoint` resubmits the same job, which resumes from that
checkpoint) and is requeued; elsewhere it exits with code 130 and running the sweep again resumes it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core.job_environment import SignalHandler

from longtail.cluster.sweep import Job, Sweep, job_graph, read_sweep, stage_of
from longtail.pipeline import SeedState, evaluate_pipeline, run_stage
from longtail.trainer.distributed import context_from_env
from longtail.utils.errors import FrameworkError

INTERRUPTED_EXIT = 130  # what train.py returns after a Ctrl-C


def record_path(sweep_folder: str | Path, key: str) -> Path:
    """Where the record of job ``key`` lives."""
    return Path(sweep_folder) / "jobs" / f"{key}.json"


def read_record(sweep_folder: str | Path, key: str) -> dict[str, Any]:
    """The job's record ({} before it first started)."""
    path = record_path(sweep_folder, key)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_record(sweep_folder: str | Path, key: str, **fields: Any) -> None:
    """Update the job's record atomically (several readers poll it)."""
    path = record_path(sweep_folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**read_record(sweep_folder, key), **fields}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def job_state(sweep: Sweep, key: str) -> str:
    """The state a job's record gives (pending before it started); an evaluation done over fewer seeds than the sweep
    now has (seeds added later) is pending again."""
    record = read_record(sweep.folder, key)
    state = record.get("state", "pending")
    if state == "done" and key.endswith("/evaluate") and record.get("seeds") not in (None, list(sweep.seeds)):
        return "pending"
    return state


def find_job(sweep: Sweep, key: str) -> Job:
    """The job called ``key`` in the sweep's graph."""
    for job in job_graph(sweep):
        if job.key == key:
            return job
    raise FrameworkError(f"sweep {sweep.name} has no job {key!r}")


def slurm_threads() -> int | None:
    """CPU threads of a SLURM task: the cores it was given (--cpus-per-task)."""
    value = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return int(value) if value.isdigit() else None


def run_job(sweep_folder: str | Path, key: str, threads: int | None = None) -> str:
    """Run job ``key`` of the sweep frozen in ``sweep_folder``; returns "done" or "interrupted" (a stop signal saved
    the run; it resumes when the job runs again). Errors are recorded and raised."""
    sweep = read_sweep(sweep_folder)
    job = find_job(sweep, key)
    primary = context_from_env().is_primary  # of a multi-task (DDP) job, rank 0 keeps the record
    slurm_id = os.environ.get("SLURM_JOB_ID")
    if primary:
        write_record(sweep_folder, key, state="running", started=time.time(), ended=None, host=socket.gethostname(),
                     pid=os.getpid(), slurm_job_id=slurm_id, restarts=int(os.environ.get("SLURM_RESTART_COUNT", 0)),
                     error=None)
    try:
        outcome = _run(sweep, job, threads if threads is not None else slurm_threads())
    except (FrameworkError, Exception) as exc:
        if primary:
            write_record(sweep_folder, key, state="failed", ended=time.time(),
                         error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        raise
    if primary:
        write_record(sweep_folder, key, state=outcome, ended=time.time(), seeds=list(sweep.seeds))
    return outcome


def _run(sweep: Sweep, job: Job, threads: int | None) -> str:
    """Train the stage or evaluate the variant."""
    variant, pipeline, stage = stage_of(sweep, job)
    device = sweep.train.get("device")
    if stage is None:
        evaluate_pipeline(pipeline, sweep.seeds, device, sweep.save_dir, folder=variant.folder)
        return "done"
    state = SeedState(Path(variant.folder), int(job.seed))
    result = run_stage(stage, int(job.seed), state, device, variant.overrides, quiet=True,
                       log=lambda line: print(line, flush=True), limit_batches=sweep.train.get("limit_batches"),
                       limit_val_batches=sweep.train.get("limit_val_batches"), threads=threads)
    return "interrupted" if result is not None and result.interrupted else "done"


class SweepJob(submitit.helpers.Checkpointable):
    """What the SLURM launcher submits: one job of a sweep (each task of a multi-task job runs it: DDP ranks).

    On SIGUSR2 / SIGTERM the trainer saves; then submitit's protocol calls :meth:`checkpoint` (inherited: the same
    job again, which resumes from the saved checkpoint), writes it as the job's submission and requeues the job."""

    def __init__(self, sweep_folder: str, key: str) -> None:
        self.sweep_folder, self.key = sweep_folder, key

    def __call__(self) -> str:
        outcome = run_job(self.sweep_folder, self.key)
        if outcome == "interrupted":
            requeue_through_submitit()
        return outcome


def requeue_through_submitit() -> None:
    """After the run saved on a stop signal: hand over to submitit's handler of the preemption signal, now restored
    (it checkpoints the submission, requeues the job with ``scontrol requeue`` and exits). Outside submitit, or on a
    rank other than 0 (submitit requeues from rank 0 only), nothing happens."""
    preemption_signal = submitit.JobEnvironment._usr_sig()
    handler = signal.getsignal(preemption_signal)
    if isinstance(getattr(handler, "__self__", None), SignalHandler) and handler.__name__ == "checkpoint_and_try_requeue":
        handler(preemption_signal, None)


def main_job(sweep_folder: str, key: str, threads: int | None = None) -> int:
    """A job as a local process (the local launcher starts ``lt-sweep job``): 0 done, 130 interrupted."""
    outcome = run_job(sweep_folder, key, threads)
    print(f"{key}: {outcome}", file=sys.stderr, flush=True)
    return 0 if outcome == "done" else INTERRUPTED_EXIT
