"""The signals that ask a run to stop and save: Ctrl-C, and what cluster schedulers send before they end a job."""
from __future__ import annotations

import signal

# SIGINT: Ctrl-C. SIGTERM: SLURM's preemption / scancel (then SIGKILL after KillWait), also `kill`. SIGUSR2: the
# signal submitit asks SLURM to send before a job's time limit (sbatch --signal=USR2@<seconds>) and on preemption.
STOP_SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGUSR2")


def stop_signals() -> tuple[signal.Signals, ...]:
    """The stop signals this platform has (SIGUSR2 does not exist on Windows)."""
    return tuple(getattr(signal, name) for name in STOP_SIGNAL_NAMES if hasattr(signal, name))


def ignore_stop_signals() -> None:
    """In a data-loading worker: leave stopping to the main process (SLURM signals every process of a job step; a
    worker killed by SIGUSR2's default action would abort the batch the main process still has to save after)."""
    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)
