"""Throughput benchmark of a config: steady-state training and evaluation images/s and peak memory.

python -m tools.benchmark -c CONFIG [--synthetic] [--set KEY=VALUE] [--compare ROUNDS]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Any, Sequence

import torch

from data_loader.datasets import dataset_info, synthetic_dataset
from data_loader.factory import DataBundle, build_augment, build_data, loader_kind, split_loader_args
from data_loader.loader import BatchLoader
from evaluation.logits import collect_logits
from tools.common import add_set_argument, run_tool, set_overrides
from trainer.build import resolve
from trainer.combiner import compute_loss
from trainer.trainer import Trainer
from utils.config import apply_overrides, load_config
from utils.device import autocast_context, resolve_device, synchronize
from utils.errors import DataNotFoundError


SYNTHETIC_MAX_BYTES = 2**31  # synthetic images kept in memory (caps ImageNet-sized profiles, not CIFAR/FMNIST)


def synthetic_limit(image_shape: tuple[int, ...]) -> int:
    """How many synthetic uint8 images of ``image_shape`` fit in SYNTHETIC_MAX_BYTES."""
    return max(1, SYNTHETIC_MAX_BYTES // max(1, int(torch.tensor(image_shape).prod())))


def synthetic_bundle(config: dict[str, Any], device: torch.device) -> DataBundle:
    """Random images with the configured data set's shape and LT counts (no files needed).

    Image-file data sets become in-memory tensors without augmentation: the model's throughput is measured, not
    JPEG decoding (benchmark the real files for that).
    """
    name = config["data_loader"]["type"]
    dataset_args, loader_args = split_loader_args(config["data_loader"])
    limit = synthetic_limit(dataset_info(name, dataset_args)["image_shape"])
    train = synthetic_dataset(name, "train", dataset_args.get("imb_factor", 0.01), args=dataset_args,
                              max_images=limit).to(device)
    test = synthetic_dataset(name, "test", seed=1, args=dataset_args, max_images=limit).to(device)
    channels_last = config["trainer"]["channels_last"]
    kind = loader_kind(name, dataset_args)
    augment = build_augment(kind, loader_args, train.image_shape[-1]) if kind == train.loader_kind else None
    return DataBundle(train, test,
                      BatchLoader(train, loader_args.get("batch_size", 128), "random", augment, config["seed"], False, channels_last),
                      BatchLoader(test, config["evaluation"]["test_batch_size"], "sequential", None, 0, False, channels_last))


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident set size of this process (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark_data(config: dict[str, Any], device: torch.device, synthetic: bool) -> DataBundle:
    """The configured data, or random data of the same shape when asked for or when the files are missing."""
    if not synthetic:
        try:
            return build_data(config, device)
        except DataNotFoundError as exc:
            print(f"note: {str(exc).splitlines()[0][:120]}... -> using synthetic data of the same shape", file=sys.stderr)
    return synthetic_bundle(config, device)


def timed_training(config: dict[str, Any], device: torch.device, steps: int, warmup: int, synthetic: bool
                   ) -> tuple[Trainer, dict[str, float]]:
    """A trainer on the benchmark data and the metrics of ``steps`` training steps timed after ``warmup`` steps."""
    trainer = Trainer(config, device, None, None, quiet=True, data=benchmark_data(config, device, synthetic))
    loader = trainer.data.train_loader
    loader.limit_batches = warmup
    trainer.train_epoch(1)
    loader.limit_batches = steps
    return trainer, trainer.train_epoch(2)


def run_benchmark(config: dict[str, Any], device: torch.device, steps: int, warmup: int, eval_batches: int,
                  synthetic: bool) -> dict[str, float]:
    """Time ``steps`` training steps after ``warmup`` steps, and ``eval_batches`` evaluation batches."""
    trainer, train = timed_training(config, device, steps, warmup, synthetic)
    data = trainer.data
    bare = bare_step_rate(trainer, max(4, steps // 2))
    subset = data.test_loader
    subset.limit_batches = eval_batches  # the first eval_batches batches of the test set (any loader kind)
    n_eval = min(len(data.test_set), eval_batches * subset.batch_size)
    collect_logits(trainer.model, subset, trainer.amp)  # warm-up
    start = time.perf_counter()
    collect_logits(trainer.model, subset, trainer.amp)
    eval_rate = n_eval / (time.perf_counter() - start)
    return {"train_images_per_s": train["images_per_s"], "eval_images_per_s": eval_rate,
            "train_epoch_s_estimate": epoch_images(config, data) / train["images_per_s"], "bare_images_per_s": bare,
            "peak_memory_mib": peak_memory_mb(device)}


def bare_step_rate(trainer: Trainer, steps: int) -> float:
    """Images/s of model forward + loss + backward alone on one fixed batch: the ceiling of a training step."""
    images, target = next(iter(trainer.data.train_loader.batches(3)))
    model = trainer.step_model

    def step() -> None:
        trainer.optimizer.zero_grad(set_to_none=True)
        with autocast_context(trainer.device, trainer.amp):
            loss = compute_loss(trainer.criterion, model(images), target).total
        loss.backward()

    step()
    synchronize(trainer.device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(trainer.device)
    trainer.optimizer.zero_grad(set_to_none=True)
    return steps * target.shape[0] / (time.perf_counter() - start)


def epoch_images(config: dict[str, Any], data: DataBundle) -> int:
    """Training images per epoch of the configured data set (the full LT profile, also when synthetic data was capped)."""
    if not data.train_set.name.endswith("/synthetic"):
        return len(data.train_set)
    dataset_args, _ = split_loader_args(config["data_loader"])
    return int(sum(dataset_info(config["data_loader"]["type"], dataset_args)["cls_num_list"]))


def compare_original_style(config: dict[str, Any], device: torch.device, steps: int, warmup: int, synthetic: bool,
                           rounds: int, first_rate: float) -> None:
    """Alternate this code's and the original-style training rate ``rounds`` times (so machine drift hits both)."""
    from benchmarks.original_style import original_style_rate  # torchvision/PIL only needed for the comparison

    ours, original = [first_rate], []
    for r in range(rounds):
        if r > 0:
            ours.append(timed_training(config, device, steps, warmup, synthetic)[1]["images_per_s"])
        original.append(original_style_rate(config, benchmark_data(config, device, synthetic), device, steps, warmup))
        print(f"round {r + 1}: this code {ours[r]:.1f} images/s, original style {original[r]:.1f} images/s")
    mean_ours, mean_original = sum(ours) / len(ours), sum(original) / len(original)
    print(f"original-style train: {mean_original:.1f} images/s over {rounds} round(s); this code {mean_ours:.1f} "
          f"images/s -> speed-up {mean_ours / mean_original:.2f}x")


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the benchmark."""
    p = argparse.ArgumentParser(description="Measure training/evaluation throughput of a config.")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("-d", "--device")
    p.add_argument("--steps", type=int, default=20, help="timed training steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps")
    p.add_argument("--eval_batches", type=int, default=10)
    p.add_argument("--synthetic", action="store_true", help="random data of the configured shape instead of the files")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    add_set_argument(p, "trainer.amp=bf16")
    p.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                   help="also time the original repos' execution pattern (PIL DataLoader workers, NCHW, looped experts, "
                        "per-step .item()), alternating ROUNDS times with this code, and print the speed-up")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    config = resolve(apply_overrides(load_config(args.config), set_overrides(args)))
    device = resolve_device(args.device)
    result = run_benchmark(config, device, args.steps, args.warmup, args.eval_batches, args.synthetic)
    speed = {k: config["trainer"][k] for k in ("channels_last", "amp", "compile")}
    speed["batched_experts"] = config["arch"].get("args", {}).get("batched_experts", False)
    print(f"config: {args.config}  device: {device}  threads: {torch.get_num_threads()}  batch: "
          f"{config['data_loader']['args'].get('batch_size')}  switches: {speed}")
    print(f"train: {result['train_images_per_s']:.1f} images/s  (epoch of the training set ~ {result['train_epoch_s_estimate']:.1f} s)")
    print(f"bare model forward+loss+backward (no data, mixup or optimizer): {result['bare_images_per_s']:.1f} images/s")
    print(f"eval:  {result['eval_images_per_s']:.1f} images/s")
    print(f"peak memory: {result['peak_memory_mib']:.0f} MiB", flush=True)
    if args.compare > 0:
        compare_original_style(config, device, args.steps, args.warmup, args.synthetic, args.compare,
                               result["train_images_per_s"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tools.benchmark``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
