"""A real single-node SLURM cluster on this machine (Debian's slurm-wlm: slurmctld + slurmd + munge), for the tests.

    sudo apt-get install -y slurm-wlm munge
    sudo python3 tools/slurm_local.py start     # prints: export SLURM_CONF=/tmp/lt-slurm/slurm.conf
    python3 tools/slurm_local.py stop

The cluster has one node (this machine, its cores and memory as ``slurmd -C`` reports them) and one partition; its
configuration, state and logs live in one folder (default /tmp/lt-slurm, or $LT_SLURM_DIR), its daemons listen on
ports of their own (16817/16818), so it stays out of the way of a SLURM installation in /etc/slurm. Requeued jobs may
start again after 10 s (``cred_expire``; SLURM's default keeps them waiting 2 minutes). Standard library only: CI
starts it with the system Python before ``make test``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DIR = Path(os.environ.get("LT_SLURM_DIR", "/tmp/lt-slurm"))
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "srun", "munged", "munge")
MUNGE_SOCKET_DIR = Path("/run/munge")


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be started here (the message says why and what to install or change)."""


def conf_path(folder: Path = DEFAULT_DIR) -> Path:
    """The cluster's slurm.conf."""
    return folder / "slurm.conf"


def node_line() -> str:
    """This machine as a SLURM node (``slurmd -C``: CPUs, sockets, cores, threads, memory), reachable on 127.0.0.1."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
    line = next((l for l in out.splitlines() if l.startswith("NodeName=")), "")
    if not line:
        raise ClusterUnavailable(f"slurmd -C did not describe this machine: {out.strip()[:200]}")
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def write_conf(folder: Path) -> Path:
    """slurm.conf for one node and one partition, everything under ``folder``."""
    for sub in ("state", "spool", "log"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    node = node_line()
    name = node.split()[0].split("=", 1)[1]
    text = f"""# single-node test cluster written by tools/slurm_local.py
ClusterName=ltlocal
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=30
{node}
PartitionName=debug Nodes={name} Default=YES MaxTime=INFINITE State=UP
"""
    path = conf_path(folder)
    path.write_text(text)
    return path


def munge_works() -> bool:
    """Whether a munge daemon answers (credentials can be made and read back)."""
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                       timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_munge() -> None:
    """Start munged as the munge user (creating its key when the package did not)."""
    if munge_works():
        return
    key = Path("/etc/munge/munge.key")
    if not key.is_file():
        subprocess.run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True, timeout=60)
    MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, timeout=60)
    for _ in range(50):
        if munge_works():
            return
        time.sleep(0.2)
    raise ClusterUnavailable("munged started but does not answer (see /var/log/munge/munged.log)")


def daemon_alive(pid_file: Path) -> bool:
    """Whether the daemon whose pid file this is runs."""
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
        return True
    except (OSError, ValueError, IndexError):
        return False


def node_ready(conf: Path) -> bool:
    """Whether the node takes jobs (sinfo: idle, mixed or allocated)."""
    env = {**os.environ, "SLURM_CONF": str(conf)}
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env, timeout=30).stdout
    return any(state.strip().rstrip("*") in ("idle", "mix", "alloc") for state in out.splitlines())


def check_can_start() -> None:
    """Root and the programs of slurm-wlm and munge are needed."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed: apt-get install -y slurm-wlm munge")
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting slurmctld / slurmd / munged needs root (this test cluster runs them as root)")


def start(folder: Path = DEFAULT_DIR, timeout_s: float = 60.0) -> Path:
    """Start (or reuse) the cluster; returns its slurm.conf (set SLURM_CONF to it)."""
    conf = conf_path(folder)
    if conf.is_file() and all(daemon_alive(folder / f"{d}.pid") for d in ("slurmctld", "slurmd")) and \
            shutil.which("sinfo") and node_ready(conf):
        return conf
    check_can_start()
    start_munge()
    conf = write_conf(folder)
    for daemon in ("slurmctld", "slurmd"):
        if not daemon_alive(folder / f"{daemon}.pid"):
            result = subprocess.run([daemon, "-f", str(conf)], capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                raise ClusterUnavailable(f"{daemon} did not start: {(result.stderr or result.stdout).strip()[:300]} "
                                         f"(log: {folder / 'log' / (daemon + '.log')})")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if node_ready(conf):
            return conf
        time.sleep(0.5)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run(["scontrol", "update", "nodename=ALL", "state=resume"], capture_output=True, env=env, timeout=30)
    if node_ready(conf):
        return conf
    raise ClusterUnavailable(f"the node did not become idle within {timeout_s:.0f} s (logs in {folder / 'log'})")


def stop(folder: Path = DEFAULT_DIR) -> None:
    """Stop the cluster's slurmd and slurmctld (munged stays: other programs may use it)."""
    for daemon in ("slurmd", "slurmctld"):
        pid_file = folder / f"{daemon}.pid"
        if daemon_alive(pid_file):
            os.kill(int(pid_file.read_text().split()[0]), 15)


def main(argv: list[str] | None = None) -> int:
    """start | stop | status."""
    p = argparse.ArgumentParser(description="A single-node SLURM cluster on this machine, for the tests.")
    p.add_argument("command", choices=("start", "stop", "status"))
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"configuration, state and logs (default {DEFAULT_DIR})")
    args = p.parse_args(argv)
    if args.command == "stop":
        stop(args.dir)
        return 0
    if args.command == "status":
        ready = conf_path(args.dir).is_file() and node_ready(conf_path(args.dir))
        print("ready" if ready else "not running")
        return 0 if ready else 1
    try:
        conf = start(args.dir)
    except (ClusterUnavailable, subprocess.CalledProcessError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
