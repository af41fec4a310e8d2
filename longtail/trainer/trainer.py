"""The training loop (stage "sgd"): exact resume (mid-epoch too), atomic checkpoints, Ctrl-C saves, on-device metrics.

It builds data, model, loss, optimizer, schedule and combiner from the config and calls the hooks of the config's
sections (trainer/hooks.py) at fixed points; it knows no method.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from longtail.data_loader.factory import DataBundle, build_data
from longtail.core.logits import masks_for, validation_metrics
from longtail.core.build import (build_combiner, build_criterion, build_model_with_sections, build_optimizer, build_scheduler,
                           check_loss_inputs, check_loss_views, num_experts_of)
from longtail.trainer.feature_cache import cached_training
from longtail.trainer.distributed import any_rank, barrier, convert_sync_batchnorm, sum_over_ranks, wrap_ddp
from longtail.core.hooks import StepContext, overriding
from longtail.registry import STAGES
from longtail.core.optim import hold_lr_as_tensor
from longtail.trainer.stages import Stage, StopRequest
from longtail.utils.device import autocast_context, resolve_amp, synchronize
from longtail.utils.logging import FILE_ONLY, ScalarWriter, progress
from longtail.utils.seed import Stream, numpy_generator, torch_generator
from longtail.utils.errors import ConfigError


PROGRESS_LOG_SECONDS = 60.0  # a progress line in train.log at most this often (the first one at the first read)


@dataclass
class EpochTotals:
    """Sums of one epoch's training metrics, kept on the device (no host read per step). A run interrupted mid-epoch
    saves them with its checkpoint, so the resumed epoch's history row covers the whole epoch."""

    loss_sum: torch.Tensor
    correct_sum: torch.Tensor
    expert_sum: torch.Tensor
    seen: int = 0
    elapsed: float = 0.0  # seconds spent in this epoch before a resume
    per_expert_logged: bool = False

    @classmethod
    def start(cls, num_experts: int, device: torch.device, saved: dict[str, Any] | None = None,
              primary: bool = True) -> "EpochTotals":
        """Zero sums, or the sums an interrupted run saved (counted once: on the primary process under DDP)."""
        totals = cls(torch.zeros((), device=device), torch.zeros((), device=device),
                     torch.zeros(num_experts, device=device))
        if saved and primary:
            totals.loss_sum += saved["loss_sum"]
            totals.correct_sum += saved["correct_sum"]
            totals.expert_sum += torch.as_tensor(saved["expert_sum"], dtype=torch.float32).to(device)
            totals.seen, totals.per_expert_logged = int(saved["seen"]), bool(saved["per_expert_logged"])
        if saved:
            totals.elapsed = float(saved["elapsed"])
        return totals

    def add(self, out: Any, batch: int) -> None:
        """Add one step's loss (times its batch), correct predictions and per-expert losses (device ops only)."""
        self.loss_sum += out.loss.detach() * batch
        self.correct_sum += out.correct.detach()
        if out.per_expert is not None:
            self.expert_sum += out.per_expert.detach() * batch
            self.per_expert_logged = True
        self.seen += batch

    def sum_over_ranks(self) -> None:
        """Global sums over the DDP processes (one collective)."""
        totals = sum_over_ranks(torch.cat([torch.stack([self.loss_sum, self.correct_sum]), self.expert_sum,
                                           torch.tensor([float(self.seen)], device=self.loss_sum.device)]))
        self.loss_sum, self.correct_sum, self.expert_sum, self.seen = totals[0], totals[1], totals[2:-1], int(totals[-1])

    def state(self, elapsed: float, distributed: bool) -> dict[str, Any]:
        """Plain-data sums for the checkpoint (global under DDP)."""
        if distributed:
            self.sum_over_ranks()
        return {"loss_sum": float(self.loss_sum), "correct_sum": float(self.correct_sum),
                "expert_sum": self.expert_sum.tolist(), "seen": self.seen, "elapsed": elapsed,
                "per_expert_logged": self.per_expert_logged}


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(setting: bool | str) -> dict[str, str] | None:
    """torch.compile arguments of ``trainer.compile``: false (eager), true (inductor, default mode), a mode
    (``reduce-overhead`` = CUDA graphs, ``max-autotune``, ...) or another backend's name (``aot_eager``)."""
    if setting is False:
        return None
    if setting is True:
        return {"backend": "inductor", "mode": "default"}
    if setting in COMPILE_MODES:
        return {"backend": "inductor", "mode": setting}
    return {"backend": setting}


def update_compile_options(options: dict[str, str]) -> dict[str, str]:
    """torch.compile arguments of the optimizer update: the step's, without CUDA graphs (the update reads gradients
    that a graphed backward replay overwrites; compiled, it is a few fused kernels either way)."""
    if options.get("mode") == "reduce-overhead":
        return {**options, "mode": "default"}
    return options


@STAGES.register("sgd")
class Trainer(Stage):
    """Trains one config with SGD on its training set: the default stage.

    Under torchrun (``dist`` with world_size > 1) every process trains on its share of each global batch inside
    DistributedDataParallel; pass ``run_dir=None`` and ``quiet=True`` on the non-primary ranks (rank 0 alone logs,
    validates and checkpoints).
    """

    def __init__(self, config: dict[str, Any], device: torch.device, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, device, *args, **kwargs)
        self.amp = resolve_amp(self.cfg_trainer["amp"], device)
        self.data: DataBundle = self.data or build_data(config, device, limit_batches=self.limit_batches,
                                                        rank=self.dist.rank, world_size=self.dist.world_size,
                                                        limit_val_batches=self.limit_val_batches)
        self.cls_num_list = self.data.cls_num_list
        self.masks = masks_for(self.cls_num_list, config["evaluation"])
        self.model, self.sections, ctx = build_model_with_sections(config, device, self.data, self.resuming)
        if self.cfg_trainer["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cfg_trainer["sync_batchnorm"] and self.dist.is_distributed:
            self.model = convert_sync_batchnorm(self.model)
        self.num_experts = num_experts_of(self.model)
        self.criterion = build_criterion(config, self.cls_num_list, self.num_experts).to(device)
        check_loss_inputs(self.criterion, self.model, self.sections)
        check_loss_views(self.criterion, self.data.train_loader.train_views)
        self.optimizer = build_optimizer(config, self.model, prefer_fused=self.amp == "fp16")
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == "fp16" else None
        options = compile_options(self.cfg_trainer["compile"])
        # the update joins the compiled step unless it is already one fused kernel (fp16: the scaler steps it)
        self.compiled_update = options is not None and self.scaler is None and not self.optimizer.defaults.get("fused")
        self.scheduler = build_scheduler(config, self.optimizer)  # before the LR becomes a tensor: float base LRs
        step_model = self.model
        for section in self.sections:  # e.g. a frozen teacher next to the student
            step_model = section.step_model(step_model, ctx)
        if self.cfg_trainer["cache_features"]:  # frozen backbone: the heads train on features computed once
            self.data, step_model = cached_training(self, step_model)
        self.step_model = self._wrap(step_model, options)
        # forward and loss are compiled (AOTAutograd compiles their backward too), then the update; full batches only,
        # so that shapes never change and CUDA graphs can be replayed (a partial last batch would recompile)
        self.step_criterion = torch.compile(self.criterion, **options) if options is not None else self.criterion
        self.update = torch.compile(self._update, **update_compile_options(options)) if self.compiled_update \
            else self._update
        if options is not None and "drop_last" not in (config["data_loader"].get("args") or {}):
            self.data.train_loader.drop_last = True
        self.monitor_mode, self.monitor_key = self._parse_monitor(self.cfg_trainer["monitor"])
        self.monitor_best = -math.inf if self.monitor_mode == "max" else math.inf
        if self.resume_state is not None:
            self.restore(self.resume_state, len(self.data.train_loader))
        hold_lr_as_tensor(self.optimizer, self.compiled_update)  # after restore: a checkpoint may come from the other mode
        self.stop = StopRequest()
        self.started = False
        self.last_progress_log = -math.inf
        self.writer = ScalarWriter(None, enabled=False)  # fit() opens the run's TensorBoard writer

    def _wrap(self, net: nn.Module, options: dict[str, str] | None) -> nn.Module:
        """DDP in a multi-process run; DataParallel only when ``trainer.parallel`` asks for it; optional torch.compile."""
        n_gpu = int(self.config.get("n_gpu", 1))
        if self.dist.is_distributed:
            net = wrap_ddp(net, self.device)
        elif self.device.type == "cuda" and n_gpu > 1 and torch.cuda.device_count() > 1:
            if self.cfg_trainer["parallel"] == "data_parallel":
                net = nn.DataParallel(net, device_ids=list(range(min(n_gpu, torch.cuda.device_count()))))
            else:
                self.logger.warning(f"n_gpu={n_gpu} but this is a single process: train.py starts one DDP process "
                                    "per GPU itself; from Python, launch with torchrun (training on one GPU now)")
        if options is not None:
            net = torch.compile(net, **options)
        return net

    def _update(self) -> None:
        """The optimizer step (compiled into the training step under ``trainer.compile``)."""
        self.optimizer.step()

    @staticmethod
    def _parse_monitor(spec: str) -> tuple[str, str]:
        """'max val_accuracy' -> ('max', 'val_accuracy'); 'off' -> ('off', '')."""
        if spec == "off":
            return "off", ""
        parts = spec.split()
        if len(parts) != 2 or parts[0] not in ("min", "max"):
            raise ConfigError(f"trainer.monitor must be 'off' or '<min|max> <metric>', got {spec!r}")
        return parts[0], parts[1]

    @classmethod
    def validate_config(cls, config: dict[str, Any]) -> None:
        """trainer.monitor must parse."""
        cls._parse_monitor(config["trainer"]["monitor"])

    # ------------------------------------------------------------------ training
    def train_epoch(self, epoch: int, start_step: int = 0) -> dict[str, float] | None:
        """One epoch from ``start_step``; returns epoch metrics, or None when interrupted (state already saved)."""
        if not self.started:  # the sections' on_train_start, once, after any restore
            self.started = True
            for section in overriding(self.sections, "on_train_start"):
                section.on_train_start(self)
        self.step_model.train()
        for section in self.sections:
            section.on_epoch_start(self.model, epoch)
        self.criterion.on_epoch_start(epoch)
        combiner = build_combiner(self.config, epoch)
        loader = self.data.train_loader
        total_steps = len(loader)
        totals = EpochTotals.start(self.num_experts, self.device, self.partial_epoch if start_step else None,
                                   primary=self.dist.is_primary)
        self.partial_epoch = None
        log_every = max(1, self.cfg_trainer["log_interval"])
        read_metrics = not self.quiet or self.writer.enabled or self.run_dir is not None
        window = (0.0, 0)  # (loss sum, images) at the last per-step log
        bar = progress(loader.batches(epoch, start_step), total_steps, f"epoch {epoch}", enabled=not self.quiet)
        bar.update(start_step)
        start = time.perf_counter() - totals.elapsed
        before_step, after_backward, after_update = (overriding(self.sections, hook) for hook in
                                                     ("before_step", "after_backward", "after_update"))
        for step, (images, target) in enumerate(bar, start=start_step):
            ctx = StepContext(self, epoch, step, images, target)
            for section in before_step:
                section.before_step(ctx)
            ctx.recompute = functools.partial(self._forward_backward, combiner, images, target, epoch, step)
            update = self._updates_after(step, total_steps)  # trainer.accumulate_steps: the last micro-batch of a group
            with self._gradient_sync(update):
                out = ctx.output = ctx.recompute()
            if update:
                for section in after_backward:
                    section.after_backward(ctx)
                self._optimizer_step()
                for section in after_update:
                    section.after_update(ctx)
            totals.add(out, target.shape[0])
            for callback in self.callbacks:
                callback(self, epoch, step)
            if (step + 1) % log_every == 0 and read_metrics:
                # the only per-step host sync, every log_interval steps: progress bar, train.log, TensorBoard scalars
                loss_total, correct_total = torch.stack([totals.loss_sum, totals.correct_sum]).tolist()
                seen, now = max(totals.seen, 1), time.perf_counter()
                bar.set_postfix(loss=f"{loss_total / seen:.3f}", acc=f"{100 * correct_total / seen:.1f}",
                                img_s=f"{seen / (now - start):.0f}")
                if now - self.last_progress_log >= PROGRESS_LOG_SECONDS:  # the log shows life within the first epoch
                    self.last_progress_log = now
                    self.logger.info(f"epoch {epoch} step {step + 1}/{total_steps} | loss {loss_total / seen:.4f} | acc "
                                     f"{100 * correct_total / seen:.2f}% | {seen / (now - start):.0f} img/s", extra=FILE_ONLY)
                window_loss = (loss_total - window[0]) / max(totals.seen - window[1], 1)
                self.writer.add_scalars({"train/loss_step": window_loss, "train/lr_step": float(self.optimizer.param_groups[0]["lr"])},
                                        (epoch - 1) * total_steps + step + 1)
                window = (loss_total, totals.seen)
            if update and self._stop_requested(step, log_every):  # a checkpoint never holds half a gradient sum
                bar.close()
                # the epoch's sums so far travel with the checkpoint: the resumed epoch reports the whole epoch
                self.partial_epoch = totals.state(time.perf_counter() - start, self.dist.is_distributed)
                path = self.save("last.pth", epoch - 1, step + 1)
                self.logger.info(f"interrupted ({', '.join(self.stop.received) or 'stop requested'}) at epoch {epoch} "
                                 f"step {step + 1}/{total_steps}; saved {path}. "
                                 f"Resume with: python train.py -r {path}")
                return None
        bar.close()
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        if self.dist.is_distributed:  # epoch metrics over the global batches, one collective per epoch
            totals.sum_over_ranks()
        seen = max(totals.seen, 1)
        metrics = {"loss": float(totals.loss_sum) / seen, "accuracy": 100.0 * float(totals.correct_sum) / seen,
                   "lr": float(self.optimizer.param_groups[0]["lr"]), "images_per_s": seen / elapsed,
                   "epoch_time_s": elapsed}
        if totals.per_expert_logged:
            metrics.update({f"loss_expert{e}": float(v) / seen for e, v in enumerate(totals.expert_sum.tolist())})
        for section in overriding(self.sections, "on_epoch_end"):
            metrics.update(section.on_epoch_end(self, epoch))
        return metrics

    def _forward_backward(self, combiner: Any, images: torch.Tensor, target: torch.Tensor, epoch: int,
                          step: int) -> Any:
        """Forward + loss (the combiner's mixing drawn from the step's seeded generators) and backward; returns the
        combiner's output. Called once per step, and again by a section that asks for a second pass."""
        gen = torch_generator(self.device, self.seed, epoch, step, Stream.COMBINER)
        with autocast_context(self.device, self.amp):
            out = combiner(self.step_model, images, target, self.step_criterion, gen,
                           numpy_generator(self.seed, epoch, step, Stream.COMBINER))
        accumulate = self.cfg_trainer["accumulate_steps"]
        if step % accumulate == 0:  # the first micro-batch of a group starts a new gradient sum
            self.optimizer.zero_grad(set_to_none=True)
        loss = out.loss / accumulate if accumulate > 1 else out.loss  # the group's mean loss, as one large batch
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return out

    def _updates_after(self, step: int, total_steps: int) -> bool:
        """Whether the optimizer steps after micro-batch ``step``: every ``trainer.accumulate_steps`` micro-batches and
        after the epoch's last one (a shorter last group keeps the 1 / accumulate_steps scale, as LIFT's code)."""
        return (step + 1) % self.cfg_trainer["accumulate_steps"] == 0 or step + 1 == total_steps

    def _gradient_sync(self, update: bool) -> Any:
        """DDP's no_sync() on micro-batches that do not end a group (gradients are all-reduced once per update)."""
        no_sync = getattr(self.step_model, "no_sync", None) if self.dist.is_distributed else None
        return no_sync() if no_sync is not None and not update else contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        """One update of the accumulated gradients (through the GradScaler under fp16)."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.update()

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
        writer = self.writer = ScalarWriter(self.run_dir, self.cfg_trainer["tensorboard"] and self.run_dir is not None)
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
                        metrics.update(validation_metrics(self.eval_model(), self.data.test_loader, self.masks, self.amp))
                    self.history.append(metrics)
                    self._log_epoch(metrics, epochs, writer)
                    self._checkpoint(epoch, metrics)
                    barrier()  # other ranks wait for rank 0's validation and checkpoint
        finally:
            writer.close()
        return metrics

    def eval_model(self) -> nn.Module:
        """The network validated during training: the model, or what a section evaluates instead (weight EMA)."""
        model = self.model
        for section in overriding(self.sections, "eval_model"):
            model = section.eval_model(model)
        return model

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
                raise ConfigError(f"trainer.monitor names {self.monitor_key!r} but the logged metrics are {sorted(metrics)}")
            better = value >= self.monitor_best if self.monitor_mode == "max" else value <= self.monitor_best
            if better:
                self.monitor_best = value
                self.save("best.pth", epoch)
        self.save_history()

    def _log_epoch(self, metrics: dict[str, Any], epochs: int, writer: ScalarWriter) -> None:
        """One summary line per epoch (train.log + console) and TensorBoard scalars."""
        line = (f"epoch {metrics['epoch']}/{epochs} | loss {metrics['loss']:.4f} | acc {metrics['accuracy']:.2f}% | "
                f"lr {metrics['lr']:.5f} | {metrics['images_per_s']:.0f} img/s | {metrics['epoch_time_s']:.1f}s")
        if "val_accuracy" in metrics:
            line += (f" | val {metrics['val_accuracy']:.2f}% (many {metrics['val_many']:.1f} / medium "
                     f"{metrics['val_medium']:.1f} / few {metrics['val_few']:.1f})").replace("nan", "n/a")
        self.logger.info(line)
        # every epoch metric: train/<name> (loss, accuracy, lr, images_per_s, loss_expert<i>, sections' metrics such
        # as grad_norm) and val/<name> (accuracy, many, medium, few, loss)
        scalars = {(f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}"): v for k, v in metrics.items()
                   if k not in ("epoch", "epoch_time_s") and isinstance(v, (int, float)) and not math.isnan(v)}
        writer.add_scalars(scalars, metrics["epoch"])

