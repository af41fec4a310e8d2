"""The training loop (stage "sgd"): exact resume (mid-epoch too), atomic checkpoints, Ctrl-C saves, on-device metrics.

It builds data, model, loss, optimizer, schedule and combiner from the config and calls the hooks of the config's
sections (trainer/hooks.py) at fixed points; it knows no method.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Any

import torch
import torch.nn as nn

from longtail.data_loader.factory import DataBundle, build_data
from longtail.core.logits import masks_for, validation_metrics
from longtail.core.build import (build_combiner, build_criterion, build_model, build_optimizer, build_scheduler,
                           check_loss_inputs, check_loss_views, num_experts_of)
from longtail.trainer.distributed import any_rank, barrier, convert_sync_batchnorm, sum_over_ranks, wrap_ddp
from longtail.core.hooks import BuildContext, StepContext, build_sections, overriding
from longtail.registry import STAGES
from longtail.core.optim import hold_lr_as_tensor
from longtail.trainer.stages import Stage, StopRequest
from longtail.utils.device import autocast_context, resolve_amp, synchronize
from longtail.utils.logging import ScalarWriter, progress
from longtail.utils.seed import Stream, numpy_generator, torch_generator
from longtail.utils.errors import ConfigError


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
        ts = self.data.train_set
        self.model = build_model(config, ts.num_classes, ts.image_shape[0], self.cls_num_list).to(device)
        ctx = BuildContext(config, device, ts.num_classes, ts.image_shape[0], self.cls_num_list, self.resuming)
        self.sections = build_sections(config)
        for section in self.sections:
            section.setup(self.model, ctx)
        if self.cfg_trainer["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.cfg_trainer["sync_batchnorm"] and self.dist.is_distributed:
            self.model = convert_sync_batchnorm(self.model)
        self.num_experts = num_experts_of(self.model)
        self.criterion = build_criterion(config, self.cls_num_list, self.num_experts).to(device)
        check_loss_inputs(self.criterion, self.model, self.sections)
        check_loss_views(self.criterion, self.data.train_loader.views)
        self.optimizer = build_optimizer(config, self.model, prefer_fused=self.amp == "fp16")
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == "fp16" else None
        options = compile_options(self.cfg_trainer["compile"])
        # the update joins the compiled step unless it is already one fused kernel (fp16: the scaler steps it)
        self.compiled_update = options is not None and self.scaler is None and not self.optimizer.defaults.get("fused")
        self.scheduler = build_scheduler(config, self.optimizer)  # before the LR becomes a tensor: float base LRs
        step_model = self.model
        for section in self.sections:  # e.g. a frozen teacher next to the student
            step_model = section.step_model(step_model, ctx)
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
        loss_sum = torch.zeros((), device=self.device)
        expert_sum = torch.zeros(self.num_experts, device=self.device)
        correct_sum = torch.zeros((), device=self.device)
        seen, log_every, per_expert_logged = 0, max(1, self.cfg_trainer["log_interval"]), False
        window = (0.0, 0)  # (loss sum, images) at the last per-step log
        bar = progress(loader.batches(epoch, start_step), total_steps, f"epoch {epoch}", enabled=not self.quiet)
        bar.update(start_step)
        start = time.perf_counter()
        before_step, after_backward, after_update = (overriding(self.sections, hook) for hook in
                                                     ("before_step", "after_backward", "after_update"))
        for step, (images, target) in enumerate(bar, start=start_step):
            ctx = StepContext(self, epoch, step, images, target)
            for section in before_step:
                section.before_step(ctx)
            ctx.recompute = functools.partial(self._forward_backward, combiner, images, target, epoch, step)
            out = ctx.output = ctx.recompute()
            for section in after_backward:
                section.after_backward(ctx)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.update()
            for section in after_update:
                section.after_update(ctx)
            batch = target.shape[0]
            loss_sum += out.loss.detach() * batch
            correct_sum += out.correct.detach()
            if out.per_expert is not None:
                expert_sum += out.per_expert.detach() * batch
                per_expert_logged = True
            seen += batch
            for callback in self.callbacks:
                callback(self, epoch, step)
            if (step + 1) % log_every == 0 and (not self.quiet or self.writer.enabled):
                # the only per-step host sync, every log_interval steps: progress bar and per-step TensorBoard scalars
                loss_total, correct_total = torch.stack([loss_sum, correct_sum]).tolist()
                bar.set_postfix(loss=f"{loss_total / seen:.3f}", acc=f"{100 * correct_total / seen:.1f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
                window_loss = (loss_total - window[0]) / max(seen - window[1], 1)
                self.writer.add_scalars({"train/loss_step": window_loss, "train/lr_step": float(self.optimizer.param_groups[0]["lr"])},
                                        (epoch - 1) * total_steps + step + 1)
                window = (loss_total, seen)
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
                   "lr": float(self.optimizer.param_groups[0]["lr"]), "images_per_s": seen / elapsed, "epoch_time_s": elapsed}
        if per_expert_logged:
            metrics.update({f"loss_expert{e}": float(v) / seen for e, v in enumerate(expert_sum.tolist())})
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
        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(out.loss) if self.scaler is not None else out.loss).backward()
        return out

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
        scalars = {"train/loss": metrics["loss"], "train/accuracy": metrics["accuracy"], "train/lr": metrics["lr"],
                   "train/images_per_s": metrics["images_per_s"]}
        scalars.update({f"train/{k}": v for k, v in metrics.items() if k.startswith("loss_expert")})
        scalars.update({f"val/{k[4:]}": v for k, v in metrics.items() if k.startswith("val_") and not math.isnan(v)})
        writer.add_scalars(scalars, metrics["epoch"])

