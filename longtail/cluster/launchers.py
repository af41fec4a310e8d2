"""Launchers run a sweep's job graph: ``local`` as processes on this machine (at most N at once, each given its share
of the cores), ``slurm`` as SLURM jobs through submitit (a stage waits for the jobs it reads: ``afterok``
dependencies by job id). Both skip jobs that are done, so launching again continues a sweep.

A launcher also tells a job's state while the sweep runs (``states``): the SLURM queue for jobs it holds, the job's
own record (longtail/cluster/jobs.py) for the others.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from longtail.cluster.jobs import INTERRUPTED_EXIT, SweepJob, job_state, read_record, write_record
from longtail.cluster.sweep import Job, Sweep, job_graph, job_resources
from longtail.registry import LAUNCHERS
from longtail.utils.device import usable_cpus
from longtail.utils.errors import ConfigError

SUBMISSIONS_FILE = "submissions.json"  # launcher, and the SLURM job id of every submitted job


def read_submissions(sweep: Sweep) -> dict[str, Any]:
    """The sweep's launcher and job ids ({} before the first launch)."""
    path = Path(sweep.folder) / SUBMISSIONS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_submissions(sweep: Sweep, launcher: str, job_ids: dict[str, str]) -> None:
    """Remember how the sweep was launched (``lt-sweep status`` reads it)."""
    path = Path(sweep.folder) / SUBMISSIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"launcher": launcher, "jobs": job_ids}, indent=2) + "\n")


def log_path(sweep: Sweep, key: str) -> Path:
    """The output of a local job."""
    return Path(sweep.folder) / "logs" / f"{key}.log"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_state(sweep: Sweep, key: str) -> str:
    """A job's state from its record alone: pending (never started), running, done, failed, interrupted, cancelled,
    or stopped (a record that says running whose process is gone from this machine)."""
    record, state = read_record(sweep.folder, key), job_state(sweep, key)
    if state == "running" and not record.get("slurm_job_id") and record.get("host") == os.uname().nodename \
            and not pid_alive(int(record.get("pid", 0))):
        return "stopped"
    return state


@LAUNCHERS.register("local")
class LocalLauncher:
    """The job graph as processes on this machine: at most ``max_parallel`` at once, each with
    ``usable cores / max_parallel`` CPU threads (torch intra-op threads and OMP_NUM_THREADS)."""

    def __init__(self, max_parallel: int | None = None) -> None:
        self.max_parallel = max(1, max_parallel or 1)

    def threads(self) -> int:
        """The CPU threads of each job."""
        return max(1, usable_cpus() // self.max_parallel)

    def launch(self, sweep: Sweep, log: Any = print) -> int:
        """Run every job that is not done, dependencies first; returns 0, 1 (a job failed) or 130 (interrupted)."""
        jobs = {job.key: job for job in job_graph(sweep)}
        todo = {key: job for key, job in jobs.items() if job_state(sweep, key) != "done"}
        write_submissions(sweep, "local", {})
        sorter: TopologicalSorter = TopologicalSorter({k: [d for d in j.deps if d in todo] for k, j in todo.items()})
        sorter.prepare()
        threads, ready, running = self.threads(), [], {}
        failed: set[str] = set()
        stopping = False
        log(f"local: {len(todo)} of {len(jobs)} jobs to run, at most {self.max_parallel} at once, {threads} CPU "
            f"thread(s) each; logs in {Path(sweep.folder) / 'logs'}")
        try:
            while sorter.is_active() and not (stopping and not running):
                ready += sorter.get_ready()
                while ready and len(running) < self.max_parallel and not stopping:
                    job = todo[ready.pop(0)]
                    broken = [d for d in job.deps if d in failed]
                    if broken:
                        write_record(sweep.folder, job.key, state="cancelled", error=f"dependency {broken[0]} failed")
                        failed.add(job.key)
                        sorter.done(job.key)
                        log(f"{job.key}: cancelled (dependency {broken[0]} failed)")
                        continue
                    running[self.start(sweep, job, threads)] = job
                    log(f"{job.key}: started")
                finished = self.wait_any(running)
                for process in finished:
                    job = running.pop(process)
                    code = process.returncode
                    if code == INTERRUPTED_EXIT:
                        stopping = True
                        log(f"{job.key}: interrupted (saved; launch again to resume)")
                        continue
                    if code != 0:
                        failed.add(job.key)
                        if read_record(sweep.folder, job.key).get("state") != "failed":
                            write_record(sweep.folder, job.key, state="failed", ended=time.time(),
                                         error=f"exit code {code}")
                        log(f"{job.key}: failed (exit code {code}; log: {log_path(sweep, job.key)})")
                    else:
                        log(f"{job.key}: done")
                    sorter.done(job.key)
        except KeyboardInterrupt:  # the jobs got the Ctrl-C too: they save and exit
            stopping = True
            for process in running:
                process.wait()
        if stopping:
            return INTERRUPTED_EXIT
        return 1 if failed else 0

    def start(self, sweep: Sweep, job: Job, threads: int) -> subprocess.Popen:
        """Start one job as ``python -m longtail.cli.sweep job`` with its share of the cores."""
        path = log_path(sweep, job.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(path, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "longtail.cli.sweep", "job", sweep.folder, job.key,
                                     "--threads", str(threads)], stdout=out, stderr=subprocess.STDOUT, env=env)

    @staticmethod
    def wait_any(running: dict[subprocess.Popen, Job]) -> list[subprocess.Popen]:
        """The processes that ended (waits until at least one has, when any runs)."""
        while running:
            done = [p for p in running if p.poll() is not None]
            if done:
                return done
            time.sleep(0.2)
        return []

    def states(self, sweep: Sweep, keys: list[str]) -> dict[str, str]:
        """Every job's state from its record."""
        return {key: record_state(sweep, key) for key in keys}


# SLURM job states (squeue %T) and what they mean for the sweep
SLURM_ACTIVE = {"PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
                "RESV_DEL_HOLD": "pending", "SUSPENDED": "pending", "CONFIGURING": "running", "RUNNING": "running",
                "COMPLETING": "running", "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running",
                "STOPPED": "running"}


def squeue(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id: (state, reason)} of the jobs the SLURM queue still lists."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(job_ids)], capture_output=True,
                             text=True, timeout=60)
    except FileNotFoundError:
        raise ConfigError("squeue not found: run lt-sweep on a machine of the SLURM cluster (a login node)") from None
    except subprocess.TimeoutExpired:
        raise ConfigError("squeue did not answer within 60 s; try again (jobs already queued would be submitted "
                          "twice without it)") from None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:  # only purged ids: none of them is queued
        raise ConfigError(f"squeue failed: {out.stderr.strip()[:300]}")
    rows = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            rows[parts[0]] = (parts[1], parts[2])
    return rows


def slurm_parameters(sweep: Sweep, job: Job, dependencies: list[str]) -> tuple[dict[str, Any], int]:
    """submitit SlurmExecutor parameters of ``job`` (and how often a timed-out job may be requeued)."""
    resources = job_resources(sweep, job)
    max_requeues = int(resources.pop("max_requeues", 10))
    if not resources.get("gpus_per_node"):
        resources.pop("gpus_per_node", None)  # clusters without GPUs reject --gpus-per-node=0
    extra = {"requeue": True, **dict(resources.pop("additional_parameters", None) or {})}
    if dependencies:
        # a stage waits for the jobs whose checkpoints it reads; if one fails, SLURM cancels the waiting job
        resources["dependency"] = "afterok:" + ":".join(dependencies)
        extra["kill_on_invalid_dep"] = "yes"
    mapping = {"tasks_per_node": "ntasks_per_node", "timeout_min": "time", "mem_gb": "mem"}
    parameters = {mapping.get(k, k): v for k, v in resources.items() if v is not None}
    if "mem" in parameters:
        parameters["mem"] = f"{int(float(parameters['mem']) * 1024)}MB"
    parameters.update(job_name=f"{sweep.name}:{job.key}", additional_parameters=extra)
    return parameters, max_requeues


@LAUNCHERS.register("slurm")
class SlurmLauncher:
    """Each job of the graph becomes a SLURM job (sbatch through submitit): resources from job_resources, ``afterok``
    dependencies on the job ids of the stages it reads, requeued after preemption or at its time limit (the trainer
    saves on the signal; submitit's checkpointing protocol resubmits the job, which resumes). A job with several tasks
    (``nodes`` x ``tasks_per_node``) trains with DDP, one process per task."""

    def __init__(self, max_parallel: int | None = None) -> None:
        self.max_parallel = max_parallel  # SLURM decides how many run at once

    def launch(self, sweep: Sweep, log: Any = print) -> int:
        """Submit every job that is neither done nor still queued; returns 0 once submitted (jobs run later)."""
        import submitit

        previous = read_submissions(sweep).get("jobs", {})
        queued = squeue(list(previous.values()))
        job_ids: dict[str, str] = {}
        folder = Path(sweep.folder) / "slurm" / "%j"
        for job in job_graph(sweep):
            if job_state(sweep, job.key) == "done":
                continue
            if job.key in previous and previous[job.key] in queued:
                job_ids[job.key] = previous[job.key]  # still pending or running: keep it (and depend on it)
                log(f"{job.key}: already queued as job {previous[job.key]}")
                continue
            parameters, max_requeues = slurm_parameters(sweep, job, [job_ids[d] for d in job.deps if d in job_ids])
            executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_requeues)
            executor.update_parameters(**parameters)
            submitted = executor.submit(SweepJob(sweep.folder, job.key))
            job_ids[job.key] = str(submitted.job_id)
            write_record(sweep.folder, job.key, state="pending", slurm_job_id=str(submitted.job_id), error=None)
            log(f"{job.key}: submitted as job {submitted.job_id}" +
                (f" (after {', '.join(job_ids[d] for d in job.deps if d in job_ids)})" if job.deps else ""))
        write_submissions(sweep, "slurm", {**previous, **job_ids})
        return 0

    def states(self, sweep: Sweep, keys: list[str]) -> dict[str, str]:
        """The queue's state for queued jobs, the job's record for the others."""
        ids = read_submissions(sweep).get("jobs", {})
        queued = squeue([ids[k] for k in keys if k in ids])
        states = {}
        for key in keys:
            record = {**read_record(sweep.folder, key), "state": job_state(sweep, key)}
            state, reason = queued.get(ids.get(key, ""), ("", ""))
            if state in SLURM_ACTIVE and record.get("state") != "done":
                kind = SLURM_ACTIVE[state]
                states[key] = f"{kind} ({reason})" if kind == "pending" and reason not in ("None", "") else kind
            elif key in ids and record.get("state") in (None, "pending", "running"):
                # left the queue without finishing: killed, cancelled, or a dependency failed
                states[key] = f"failed ({state})" if state else "failed"
            else:
                states[key] = record.get("state", "pending")
        return states


def make_launcher(name: str, max_parallel: int | None = None) -> Any:
    """The launcher called ``name`` (local, slurm)."""
    return LAUNCHERS.get(name, where="--launcher")(max_parallel)


def launcher_of(sweep: Sweep) -> Any:
    """The launcher the sweep was last launched with."""
    name = read_submissions(sweep).get("launcher")
    if name is None:
        raise ConfigError(f"sweep {sweep.name} was never launched ({sweep.folder}); run lt-sweep run first")
    return make_launcher(name)
