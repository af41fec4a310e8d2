"""What every stage shares: seeding, logging, the run directory and the one checkpoint writer (exact resume).

A stage turns a resolved config into ``last.pth``. The SGD training loop (trainer/trainer.py, stage "sgd") is
one; methods register others (a calibration fitted on cached logits, a post-hoc weight transform). All of them
write the same plain-data checkpoint (atomic, loadable with ``weights_only=True``) through :meth:`Stage.save`
and resume through :meth:`Stage.restore`, so ``train.py -r <run>/last.pth`` continues any stage.
"""
from __future__ import annotations

import json
import math
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from longtail.core.build import load_weights, model_state, parameter_counts
from longtail.trainer.distributed import DistContext
from longtail.utils.checkpoint import save_checkpoint, unwrap_model
from longtail.utils.config import config_stem
from longtail.utils.errors import CheckpointError, ConfigError
from longtail.utils.logging import get_logger
from longtail.utils.seed import get_rng_state, seed_everything, set_rng_state
from longtail.utils.signals import stop_signals
from longtail.utils.tables import write_csv


def make_run_dir(save_dir: str | Path, name: str, seed: int) -> Path:
    """Create ``<save_dir>/<name>/seed<seed>-<timestamp>/`` (a numeric suffix avoids collisions)."""
    base = Path(save_dir) / config_stem(name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = base / (f"seed{seed}-{stamp}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            if not base.is_dir():
                break
            continue
        except OSError as exc:
            raise ConfigError(f"cannot create the run directory {path} (trainer.save_dir {save_dir}): {exc.strerror}") from None
    raise ConfigError(f"could not create a run directory under {base} (trainer.save_dir {save_dir})")


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Freeze the resolved config next to the checkpoints."""
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


class StopRequest:
    """Turns the first stop signal into a flag checked between steps, so that the run saves an exact checkpoint and
    returns: Ctrl-C (SIGINT), and SIGTERM / SIGUSR2, which SLURM sends before it preempts a job or ends it at its time
    limit (utils/signals.py). A second Ctrl-C aborts immediately; further scheduler signals are only recorded (SLURM
    and submitit send SIGTERM and SIGUSR2 back to back)."""

    def __init__(self) -> None:
        self.requested = False
        self.received: list[str] = []  # signal names, in order
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT and "SIGINT" in self.received:
            raise KeyboardInterrupt
        self.requested = True
        self.received.append(signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in stop_signals():
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():  # e.g. submitit's requeue handler comes back into force
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


class Stage:
    """Base of every stage. Subclasses build ``model`` (and, when they train, ``criterion``, ``optimizer``,
    ``scheduler``) in ``__init__`` after calling this one, then call :meth:`restore` with ``resume_state``."""

    def __init__(self, config: dict[str, Any], device: torch.device, run_dir: Path | None = None,
                 resume_state: dict[str, Any] | None = None, limit_batches: int | None = None, quiet: bool = False,
                 callbacks: Sequence[Callable[[Any, int, int], None]] = (), data: Any = None,
                 dist: DistContext | None = None, limit_val_batches: int | None = None) -> None:
        self.config, self.device, self.run_dir, self.callbacks = config, device, run_dir, list(callbacks)
        self.resume_state, self.data = resume_state, data
        self.limit_batches, self.limit_val_batches, self.quiet = limit_batches, limit_val_batches, quiet
        self.dist = dist or DistContext()
        self.cfg_trainer = config["trainer"]
        self.seed = int(config["seed"])
        self.logger = get_logger("lt.train", run_dir / "train.log" if run_dir else None, quiet=quiet)
        seed_everything(self.seed, self.cfg_trainer["deterministic"])
        self.model: nn.Module | None = None
        self.criterion: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.cls_num_list: list[int] = []
        self.history: list[dict[str, Any]] = []
        self.sections: list[Any] = []  # config sections with hooks (their state travels with the checkpoint)
        self.monitor_best = -math.inf
        self.start_epoch, self.start_step = 1, 0
        self.partial_epoch: dict[str, Any] | None = None  # metric sums of an epoch interrupted mid-way
        self.saved_epochs: dict[str, int] = {}  # file name -> epoch of its last successful write

    def attach_run_dir(self, run_dir: Path) -> None:
        """Write checkpoints and train.log into ``run_dir`` from now on (a run directory exists only once
        everything was built)."""
        self.run_dir = run_dir
        self.logger = get_logger("lt.train", run_dir / "train.log", quiet=self.quiet)

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """Stage-specific checks of a resolved config (no files read), run before anything is built."""

    @classmethod
    def check_inputs(cls, config: dict[str, Any]) -> None:
        """Stage-specific checks of the files the stage reads, run before the run directory is created."""

    def total_epochs(self) -> int:
        """Epochs this stage runs in all (a run is finished when its checkpoint holds them all)."""
        return int(self.cfg_trainer["epochs"])

    @property
    def resuming(self) -> bool:
        """Whether this stage continues a saved run (weights come from its own checkpoint)."""
        return self.resume_state is not None

    def state(self, epoch: int, step: int) -> dict[str, Any]:
        """Plain-data state after ``epoch`` full epochs and ``step`` batches of the next one."""
        weights, base = model_state(unwrap_model(self.model))
        return {
            "epoch": epoch, "step": step, "model": weights, "base": base,
            "parameters": parameter_counts(unwrap_model(self.model)),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "lr_scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "criterion": self.criterion.state_dict() if self.criterion is not None else None,
            "config": self.config, "cls_num_list": list(self.cls_num_list), "monitor_best": self.monitor_best,
            "rng": get_rng_state(), "history": self.history,
            "sections": {s.name: s.state_dict() for s in self.sections},
            # how far the run got: evaluation refuses to average runs that did not finish (utils.checkpoint.run_status)
            "progress": {"epoch": epoch, "step": step, "epochs": self.total_epochs()},
            "partial_epoch": self.partial_epoch if step else None,
            # options that shape the run beyond its config: a resume continues with the same ones
            "run_options": {"limit_batches": self.limit_batches, "limit_val_batches": self.limit_val_batches},
        }

    def save(self, name: str, epoch: int, step: int = 0) -> Path | None:
        """Atomically write ``<run_dir>/<name>`` (nothing without a run directory); a failed write (disk full) says
        which earlier version of the file is intact."""
        if self.run_dir is None:
            return None
        try:
            path = save_checkpoint(self.state(epoch, step), self.run_dir / name)
        except CheckpointError as exc:
            previous = self.saved_epochs.get(name, self.start_epoch - 1 if self.resuming else None)
            kept = (f"the previous {name} (epoch {previous}) is intact: free space and resume with python train.py -r "
                    f"{self.run_dir / name}" if previous is not None else "no earlier checkpoint of this run exists")
            raise CheckpointError(f"{exc}; {kept}") from None
        self.saved_epochs[name] = epoch
        return path

    def save_history(self) -> None:
        """history.csv: one row per epoch (rewritten after every epoch)."""
        if self.run_dir is None:
            return
        try:
            write_csv(self.history, self.run_dir / "history.csv")
        except OSError as exc:
            raise CheckpointError(f"could not write {self.run_dir / 'history.csv'}: {exc.strerror}") from None

    def restore(self, state: dict[str, Any], steps_per_epoch: int | None = None) -> None:
        """Load weights, optimizer, schedule, scaler, RNG and progress counters from a checkpoint of this stage."""
        load_weights(unwrap_model(self.model), state["model"], "the checkpoint to resume", state.get("base"))
        if self.optimizer is not None and state.get("optimizer"):
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("lr_scheduler"):
            self.scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.criterion is not None and state.get("criterion"):
            self.criterion.load_state_dict(state["criterion"])
        for section in self.sections:
            saved = state.get("sections", {}).get(section.name)
            if saved:
                section.load_state_dict(saved)
        set_rng_state(state["rng"])
        self.monitor_best = state.get("monitor_best", self.monitor_best)
        self.history = list(state.get("history", []))
        self.partial_epoch = state.get("partial_epoch")
        self.start_epoch, self.start_step = int(state["epoch"]) + 1, int(state.get("step", 0))
        if steps_per_epoch is not None and self.start_step >= steps_per_epoch:
            self.start_epoch, self.start_step = self.start_epoch + 1, 0

    def fit(self) -> dict[str, Any]:
        """Run the stage to the end (or to a Ctrl-C: ``{"interrupted": True}``); returns the final metrics."""
        raise NotImplementedError
