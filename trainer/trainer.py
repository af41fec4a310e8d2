"""The training loop: exact resume (mid-epoch too), atomic checkpoints, Ctrl-C saves, on-device metric accumulation."""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn

from data_loader.factory import DataBundle, build_data
from trainer.build import (build_combiner, build_criterion, build_model, build_optimizer, build_scheduler,
                           frozen_batchnorm_to_eval, init_from_checkpoint, num_experts_of, synchronize)
from trainer.distributed import DistContext, any_rank, barrier, convert_sync_batchnorm, sum_over_ranks, wrap_ddp
from trainer.distill import with_teacher
from trainer.evaluator import autocast_context, masks_for, validation_metrics
from utils.checkpoint import CheckpointError, save_checkpoint, strip_prefixes, unwrap_model
from utils.config import config_stem
from utils.logging import ScalarWriter, get_logger, progress
from utils.seed import get_rng_state, numpy_generator, seed_everything, set_rng_state, torch_generator
from utils.tables import write_csv

STREAM_COMBINER = 3  # random-stream tag of the combiner (mixup permutation and lambda)


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
            continue
    raise RuntimeError(f"could not create a run directory under {base}")


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) into a flag checked between steps; a second Ctrl-C aborts immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class Trainer:
    """Trains one config: builds data, model, loss, optimizer, schedule and combiner, then runs the epochs.

    Under torchrun (``dist`` with world_size > 1) every process trains on its share of each global batch inside
    DistributedDataParallel; pass ``run_dir=None`` and ``quiet=True`` on the non-primary ranks (rank 0 alone logs,
    validates and checkpoints).
    """

    def __init__(self, config: dict[str, Any], device: torch.device, run_dir: Path | None = None,
                 resume_state: dict[str, Any] | None = None, limit_batches: int | None = None, quiet: bool = False,
                 callbacks: Sequence[Callable[["Trainer", int, int], None]] = (), data: DataBundle | None = None,
                 dist: DistContext | None = None) -> None:
        self.config, self.device, self.run_dir, self.callbacks = config, device, run_dir, list(callbacks)
        self.dist = dist or DistContext()
        self.cfg_trainer = config["trainer"]
        self.seed = int(config["seed"])
        self.amp = self.cfg_trainer["amp"]
        self.logger = get_logger("lt.train", run_dir / "train.log" if run_dir else None, quiet=quiet)
        self.quiet = quiet
        seed_everything(self.seed, self.cfg_trainer["deterministic"])
        self.data: DataBundle = data or build_data(config, device, limit_batches=limit_batches, rank=self.dist.rank,
                                                   world_size=self.dist.world_size)
        self.cls_num_list = self.data.cls_num_list
        self.masks = masks_for(self.cls_num_list, config["evaluation"])
        ts = self.data.train_set
        self.model = build_model(config, ts.num_classes, ts.image_shape[0], self.cls_num_list).to(device)
        self.frozen = (init_from_checkpoint(self.model, config["init_from"], load=resume_state is None)
                       if "init_from" in config else [])
        if self.cfg_trainer["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cfg_trainer["sync_batchnorm"] and self.dist.is_distributed:
            self.model = convert_sync_batchnorm(self.model)
        self.num_experts = num_experts_of(self.model)
        self.criterion = build_criterion(config, self.cls_num_list, self.num_experts).to(device)
        self.optimizer = build_optimizer(config, self.model)
        self.scheduler = build_scheduler(config, self.optimizer)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == "fp16" else None
        # the step model adds a frozen teacher's output when the loss distils (config "distill"; trainer/distill.py)
        self.step_model = self._wrap(
            with_teacher(config, self.criterion, self.model, ts.num_classes, ts.image_shape[0], device))
        self.start_epoch, self.start_step = 1, 0
        self.monitor_mode, self.monitor_key = self._parse_monitor(self.cfg_trainer["monitor"])
        self.monitor_best = -math.inf if self.monitor_mode == "max" else math.inf
        self.history: list[dict[str, Any]] = []
        if resume_state is not None:
            self._restore(resume_state)
        self.stop = StopRequest()

    def _wrap(self, model: nn.Module) -> nn.Module:
        """DDP under torchrun, else DataParallel for n_gpu > 1 on several visible GPUs; optional torch.compile."""
        n_gpu = int(self.config.get("n_gpu", 1))
        if self.dist.is_distributed:
            model = wrap_ddp(model, self.device)
        elif self.device.type == "cuda" and n_gpu > 1 and torch.cuda.device_count() > 1:
            model = nn.DataParallel(model, device_ids=list(range(min(n_gpu, torch.cuda.device_count()))))
        backend = self.cfg_trainer["compile"]
        if backend:
            model = torch.compile(model, backend=backend if isinstance(backend, str) else "inductor")
        return model

    @staticmethod
    def _parse_monitor(spec: str) -> tuple[str, str]:
        """'max val_accuracy' -> ('max', 'val_accuracy'); 'off' -> ('off', '')."""
        if spec == "off":
            return "off", ""
        parts = spec.split()
        if len(parts) != 2 or parts[0] not in ("min", "max"):
            raise ValueError(f"trainer.monitor must be 'off' or '<min|max> <metric>', got {spec!r}")
        return parts[0], parts[1]

    # ------------------------------------------------------------------ checkpoints
    def state(self, epoch: int, step: int) -> dict[str, Any]:
        """Plain-data training state after ``epoch`` full epochs and ``step`` batches of the next one."""
        return {
            "epoch": epoch, "step": step, "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(), "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None, "criterion": self.criterion.state_dict(),
            "config": self.config, "cls_num_list": self.cls_num_list, "monitor_best": self.monitor_best,
            "rng": get_rng_state(), "history": self.history,
        }

    def save(self, name: str, epoch: int, step: int = 0) -> Path | None:
        """Atomically write ``<run_dir>/<name>``."""
        if self.run_dir is None:
            return None
        return save_checkpoint(self.state(epoch, step), self.run_dir / name)

    def _restore(self, state: dict[str, Any]) -> None:
        """Load weights, optimizer, schedule, scaler, RNG and progress counters from a checkpoint."""
        try:
            unwrap_model(self.model).load_state_dict(strip_prefixes(state["model"]))
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint weights do not fit the configured model (did arch.args change?): "
                                  f"{str(exc).splitlines()[0]} ...") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("criterion"):
            self.criterion.load_state_dict(state["criterion"])
        set_rng_state(state["rng"])
        self.monitor_best = state.get("monitor_best", self.monitor_best)
        self.history = list(state.get("history", []))
        self.start_epoch, self.start_step = int(state["epoch"]) + 1, int(state.get("step", 0))
        if self.start_step >= len(self.data.train_loader):
            self.start_epoch, self.start_step = self.start_epoch + 1, 0

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, start_step: int = 0) -> dict[str, float] | None:
        """One epoch from ``start_step``; returns epoch metrics, or None when interrupted (state already saved)."""
        self.step_model.train()
        if self.frozen:
            frozen_batchnorm_to_eval(self.model)
        if hasattr(self.criterion, "on_epoch_start"):
            self.criterion.on_epoch_start(epoch)
        combiner = build_combiner(self.config, epoch)
        loader = self.data.train_loader
        total_steps = len(loader)
        loss_sum = torch.zeros((), device=self.device)
        expert_sum = torch.zeros(self.num_experts, device=self.device)
        correct_sum = torch.zeros((), device=self.device)
        seen, log_every, per_expert_logged = 0, max(1, self.cfg_trainer["log_interval"]), False
        bar = progress(loader.batches(epoch, start_step), total_steps, f"epoch {epoch}", enabled=not self.quiet)
        bar.update(start_step)
        start = time.perf_counter()
        for step, (images, target) in enumerate(bar, start=start_step):
            gen = torch_generator(self.device, self.seed, epoch, step, STREAM_COMBINER)
            with autocast_context(self.device, self.amp):
                out = combiner(self.step_model, images, target, self.criterion, gen,
                               numpy_generator(self.seed, epoch, step, STREAM_COMBINER))
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(out.loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                out.loss.backward()
                self.optimizer.step()
            batch = target.shape[0]
            loss_sum += out.loss.detach() * batch
            correct_sum += out.correct.detach()
            if out.per_expert is not None:
                expert_sum += out.per_expert.detach() * batch
                per_expert_logged = True
            seen += batch
            for callback in self.callbacks:
                callback(self, epoch, step)
            if (step + 1) % log_every == 0 and not self.quiet:  # the only per-step host sync, every log_interval steps
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{100 * float(correct_sum) / seen:.1f}",
                                img_s=f"{rate:.0f}")
            if self._stop_requested(step, log_every):
                bar.close()
                path = self.save("last.pth", epoch - 1, step + 1)
                self.logger.info(f"interrupted at epoch {epoch} step {step + 1}/{total_steps}; saved {path}. "
                                 f"Resume with: python train.py -r {path}")
                return None
        bar.close()
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        if self.dist.is_distributed:  # epoch metrics over the global batches, one collective per epoch
            totals = sum_over_ranks(torch.cat([torch.stack([loss_sum, correct_sum]), expert_sum,
                                               torch.tensor([float(seen)], device=self.device)]))
            loss_sum, correct_sum, expert_sum, seen = totals[0], totals[1], totals[2:-1], int(totals[-1])
        seen = max(seen, 1)
        metrics = {"loss": float(loss_sum) / seen, "accuracy": 100.0 * float(correct_sum) / seen,
                   "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": seen / elapsed, "epoch_time_s": elapsed}
        if per_expert_logged:
            metrics.update({f"loss_expert{e}": float(v) / seen for e, v in enumerate(expert_sum.tolist())})
        return metrics

    def _stop_requested(self, step: int, log_every: int) -> bool:
        """Ctrl-C flag; under DDP all ranks agree on it every ``log_interval`` steps (so they stop at the same step)."""
        if not self.dist.is_distributed:
            return self.stop.requested
        return (step + 1) % log_every == 0 and any_rank(self.stop.requested, self.device)

    def _should_validate(self, epoch: int) -> bool:
        """Validate every val_period epochs, after the last epoch, and every epoch when monitoring."""
        period = self.cfg_trainer["val_period"]
        last = epoch == self.cfg_trainer["epochs"]
        return last or self.monitor_mode != "off" or (period > 0 and epoch % period == 0)

    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the last epoch's metrics (``{'interrupted': True}`` after Ctrl-C)."""
        epochs = self.cfg_trainer["epochs"]
        writer = ScalarWriter(self.run_dir, self.cfg_trainer["tensorboard"] and self.run_dir is not None)
        metrics: dict[str, Any] = {}
        try:
            with self.stop:
                for epoch in range(self.start_epoch, epochs + 1):
                    start_step, self.start_step = self.start_step, 0
                    train_metrics = self.train_epoch(epoch, start_step)
                    if train_metrics is None:
                        return {"interrupted": True, "epoch": epoch}
                    self.scheduler.step()
                    metrics = {"epoch": epoch, **train_metrics}
                    if self._should_validate(epoch) and self.dist.is_primary:
                        metrics.update(validation_metrics(self.model, self.data.test_loader, self.masks, self.amp))
                    self.history.append(metrics)
                    self._log_epoch(metrics, epochs, writer)
                    self._checkpoint(epoch, metrics)
                    barrier()  # other ranks wait for rank 0's validation and checkpoint
        finally:
            writer.close()
        return metrics

    def _checkpoint(self, epoch: int, metrics: dict[str, Any]) -> None:
        """last.pth every epoch, checkpoint-epoch<E>.pth every save_period, best.pth when the monitor improves."""
        if self.run_dir is None:
            return
        self.save("last.pth", epoch)
        period = self.cfg_trainer["save_period"]
        if period > 0 and epoch % period == 0:
            self.save(f"checkpoint-epoch{epoch}.pth", epoch)
        if self.monitor_mode != "off":
            value = metrics.get(self.monitor_key)
            if value is None:
                raise KeyError(f"trainer.monitor names {self.monitor_key!r} but the logged metrics are {sorted(metrics)}")
            better = value >= self.monitor_best if self.monitor_mode == "max" else value <= self.monitor_best
            if better:
                self.monitor_best = value
                self.save("best.pth", epoch)
        write_csv(self.history, self.run_dir / "history.csv")

    def _log_epoch(self, metrics: dict[str, Any], epochs: int, writer: ScalarWriter) -> None:
        """One summary line per epoch (train.log + console) and TensorBoard scalars."""
        line = (f"epoch {metrics['epoch']}/{epochs} | loss {metrics['loss']:.4f} | acc {metrics['accuracy']:.2f}% | "
                f"lr {metrics['lr']:.5f} | {metrics['images_per_s']:.0f} img/s | {metrics['epoch_time_s']:.1f}s")
        if "val_accuracy" in metrics:
            line += (f" | val {metrics['val_accuracy']:.2f}% (many {metrics['val_many']:.1f} / medium "
                     f"{metrics['val_medium']:.1f} / few {metrics['val_few']:.1f})").replace("nan", "n/a")
        self.logger.info(line)
        scalars = {"train/loss": metrics["loss"], "train/accuracy": metrics["accuracy"], "train/lr": metrics["lr"],
                   "train/images_per_s": metrics["images_per_s"]}
        scalars.update({f"train/{k}": v for k, v in metrics.items() if k.startswith("loss_expert")})
        scalars.update({f"val/{k[4:]}": v for k, v in metrics.items() if k.startswith("val_") and not math.isnan(v)})
        writer.add_scalars(scalars, metrics["epoch"])


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Freeze the resolved config next to the checkpoints."""
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
