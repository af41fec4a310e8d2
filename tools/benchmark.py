"""Throughput benchmark of a config: steady-state training and evaluation images/s and peak memory.

python -m tools.benchmark -c CONFIG [--synthetic] [--set KEY=VALUE] [--compare ROUNDS] [--record FILE]
python -m tools.benchmark --pipeline configs/pipelines/X.json --synthetic [--record FILE]   # every stage of a recipe
python -m tools.benchmark --priors_only -c configs/inat2018/balpoe_resnet50_standard.json    # evaluation of all priors
python -m tools.benchmark --data_throughput 400                  # JPEG decode + augment per core: folders vs shards

``--record`` merges the figures (and the expected time of the config's whole schedule) into a JSON file keyed by
config path; ``python -m tools.leaderboard`` reads it for the README's leaderboard.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import torch

from longtail.data_loader.datasets import dataset_info, synthetic_dataset
from longtail.data_loader.factory import (DataBundle, build_augment, build_data, input_spec, loader_kind,
                                          split_loader_args)
from longtail.data_loader.loader import BatchLoader
from longtail.data_loader.multiview import MultiViewAugment, num_views
from longtail.core.logits import collect_logits
from longtail.cli.common import add_set_argument, run_tool, set_overrides
from longtail.core.build import resolve, stage_class
from longtail.core.combiner import compute_loss
from longtail.trainer.trainer import Trainer
from longtail.utils.checkpoint import save_checkpoint
from longtail.utils.config import apply_overrides, load_config
from longtail.utils.errors import ConfigError
from longtail.utils.device import autocast_context, resolve_device, synchronize
from longtail.utils.errors import DataNotFoundError


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
    spec = input_spec(loader_args)  # the model's preprocessing (a foundation backbone's size, mean, std)
    if spec is not None:
        train, test = train.with_input(spec), test.with_input(spec)
    channels_last = config["trainer"]["channels_last"]
    kind = loader_kind(name, dataset_args)
    augment = build_augment(kind, loader_args, train.image_shape[-1])
    if kind != train.loader_kind:  # per-image transforms do not apply to tensors: keep only the number of views
        augment = MultiViewAugment([None] * num_views(augment)) if num_views(augment) > 1 else None
    return DataBundle(train, test,
                      BatchLoader(train, loader_args.get("batch_size", 128), "random", augment, config["seed"], False, channels_last),
                      BatchLoader(test, config["evaluation"]["test_batch_size"], "sequential", None, 0, False, channels_last))


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window on CUDA, so each benchmarked setting reports its own peak (the CPU's peak
    RSS cannot be reset: it stays the process's peak)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset (CUDA) or peak resident set size of this process (CPU), in MiB."""
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
                  synthetic: bool) -> tuple[Trainer, dict[str, float]]:
    """Time ``steps`` training steps after ``warmup`` steps, and ``eval_batches`` evaluation batches; returns the
    trainer too (its state feeds a pipeline's later stages)."""
    reset_peak_memory(device)
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
    cache = {"feature_cache_s": trainer.feature_cache_seconds} if hasattr(trainer, "feature_cache_seconds") else {}
    return trainer, {**cache, "train_images_per_s": train["images_per_s"], "eval_images_per_s": eval_rate,
                     "train_epoch_s_estimate": epoch_images(config, data) / train["images_per_s"],
                     "bare_images_per_s": bare, "peak_memory_mib": peak_memory_mb(device)}


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


def write_jpeg_list(root: Path, count: int, size: tuple[int, int], classes: int = 10) -> Path:
    """``count`` JPEGs of ``size`` (W, H; smooth colour fields plus noise, quality 90, about the bytes of an ImageNet
    photo) under root/images, and their list root/train.txt / test.txt (a custom ``txt_list`` data set)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = []
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    for index in range(count):
        label = index % classes
        phase = rng.uniform(0, 6.28, 3)
        field = np.stack([127 + 100 * np.sin(xs / (17 + 5 * c) + ys / (23 + 3 * c) + phase[c]) for c in range(3)], -1)
        pixels = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        rel = f"c{label}/{index:06d}.jpg"
        (root / "images" / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / "images" / rel, quality=90)
        lines.append(f"{rel} {label}")
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def data_throughput(count: int, size: tuple[int, int], augment: str = "imagenet", repeats: int = 2) -> dict[str, float]:
    """Images/s decoded and augmented by one process on one thread (= per CPU core), read from image files (folder +
    list) and from WebDataset shards of the same files, in a random epoch order; the files are in the page cache
    (a cluster file system adds its own per-file cost to the folder layout, which this does not measure)."""
    from longtail.data_loader.factory import build_dataset
    from longtail.data_loader.image_loader import SampleReader
    from longtail.data_loader.image_transforms import eval_transform
    from longtail.data_loader.shards import write_shards
    from longtail.registry import IMAGE_AUGMENTS

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_jpeg_list(Path(tmp), count, size)
        config = {"data_loader": {"type": "txt_list", "args": {"data_dir": str(root / "images"), "txt_dir": str(root),
                                                               "num_classes": 10}}}
        folder = build_dataset(config, "train")
        write_shards(folder, root / "shards", "train", shard_size=max(1, count // 4))
        config["data_loader"]["args"]["shards"] = str(root / "shards")
        shards = build_dataset(config, "train")
        transform = IMAGE_AUGMENTS.build(augment, "augment", size=224) if augment != "none" else eval_transform(256, 224)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(0)).tolist()
        rates: dict[str, list[float]] = {"folder": [], "shards": []}
        for round_ in range(repeats):  # alternate, so that both layouts see the same machine load
            for name, dataset in (("folder", folder), ("shards", shards)):
                reader = SampleReader(dataset, transform, seed=1)
                start = time.perf_counter()
                for position, index in enumerate(order):
                    reader[(index, round_ + 1, position)]
                rates[name].append(count / (time.perf_counter() - start))
    return {f"{name}_images_per_s_per_core": max(values) for name, values in rates.items()}


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the benchmark."""
    p = argparse.ArgumentParser(description="Measure training/evaluation throughput of a config.")
    p.add_argument("-c", "--config", help="the config to benchmark (or --pipeline)")
    p.add_argument("--pipeline", help="benchmark every training stage of a pipeline file (configs/pipelines/); the "
                                      "checkpoints that later stages read are stand-ins written from the benchmarked "
                                      "earlier stage (the weights do not change the speed)")
    p.add_argument("--priors_only", action="store_true",
                   help="time the evaluation of every test prior of the config's data set (plain, oracle and EM "
                        "corrections) on random logits of the full test-set size, and print time and peak memory")
    p.add_argument("--corrections", default="none,oracle,estimate",
                   help="post-hoc corrections evaluated by --priors_only (EM 'estimate' iterates over the logits)")
    p.add_argument("--record", metavar="FILE", help="merge the figures into this JSON file, keyed by config path "
                                                     "(read by python -m tools.leaderboard)")
    p.add_argument("-d", "--device")
    p.add_argument("--steps", type=int, default=20, help="timed training steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps")
    p.add_argument("--eval_batches", type=int, default=10)
    p.add_argument("--synthetic", action="store_true", help="random data of the configured shape instead of the files")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--data_throughput", type=int, metavar="IMAGES",
                   help="no config: write IMAGES synthetic JPEGs, shard them, and print the images/s one core decodes and "
                        "augments (ImageNet recipe, 224 px) from the folder layout and from the shards")
    p.add_argument("--image_size", default="500x375", help="WxH of --data_throughput's JPEGs (default: ImageNet's "
                                                            "typical 500x375)")
    p.add_argument("--augment", default="imagenet", help="--data_throughput's augmentation (imagenet, randaugment, none)")
    add_set_argument(p, "trainer.amp=bf16")
    p.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                   help="also time the original repos' execution pattern (PIL DataLoader workers, NCHW, looped experts, "
                        "per-step .item()), alternating ROUNDS times with this code, and print the speed-up")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its figures."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_throughput:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
        rates = data_throughput(args.data_throughput, (width, height), args.augment)
        print(f"CPU: {cpu_name()}  ({args.data_throughput} JPEGs of {width}x{height}, augment {args.augment}, 224 px, "
              f"one process, one thread)")
        print(f"folder + list:     {rates['folder_images_per_s_per_core']:.1f} images/s per core")
        print(f"WebDataset shards: {rates['shards_images_per_s_per_core']:.1f} images/s per core")
        return 0
    if bool(args.config) == bool(args.pipeline):
        raise ConfigError("give either -c CONFIG or --pipeline FILE")
    device = resolve_device(args.device)
    if args.priors_only:
        config = resolve(apply_overrides(load_config(args.config), set_overrides(args)))
        benchmark_prior_evaluation(config, device, tuple(args.corrections.split(",")))
        return 0
    if args.pipeline:
        records = benchmark_pipeline(args, device)
    else:
        config = resolve(apply_overrides(load_config(args.config), set_overrides(args)))
        records = {args.config: benchmark_config(args, config, device)[1]}
    if args.record:
        write_record(Path(args.record), records, device, args)
    return 0


def benchmark_config(args: argparse.Namespace, config: dict[str, Any], device: torch.device,
                     label: str | None = None) -> tuple[Trainer, dict[str, Any]]:
    """Benchmark one resolved config, print its figures, and return the trainer and the figures to record."""
    trainer, result = run_benchmark(config, device, args.steps, args.warmup, args.eval_batches, args.synthetic)
    speed = {k: config["trainer"][k] for k in ("channels_last", "amp", "compile")}
    speed["batched_experts"] = config["arch"].get("args", {}).get("batched_experts", False)
    print(f"config: {label or args.config}  device: {device}  threads: {torch.get_num_threads()}  batch: "
          f"{config['data_loader']['args'].get('batch_size')}  switches: {speed}")
    print(f"train: {result['train_images_per_s']:.1f} images/s  (epoch of the training set ~ {result['train_epoch_s_estimate']:.1f} s)")
    print(f"bare model forward+loss+backward (no data, mixup or optimizer): {result['bare_images_per_s']:.1f} images/s")
    print(f"eval:  {result['eval_images_per_s']:.1f} images/s")
    if "feature_cache_s" in result:  # trainer.cache_features: the one pass of the frozen backbone over the training set
        print(f"feature cache: {result['feature_cache_s']:.1f} s once (then the training steps above run on the cache)")
    print(f"peak memory: {result['peak_memory_mib']:.0f} MiB", flush=True)
    if args.compare > 0:
        compare_original_style(config, device, args.steps, args.warmup, args.synthetic, args.compare,
                               result["train_images_per_s"])
    record = {**{k: round(v, 2) for k, v in result.items()}, **schedule_estimate(config, trainer.data, result),
              "batch_size": config["data_loader"]["args"].get("batch_size")}
    print(f"whole schedule ({record['epochs']} epochs + validation): ~{record['schedule_hours']:.2f} h", flush=True)
    return trainer, record


def benchmark_prior_evaluation(config: dict[str, Any], device: torch.device,
                               corrections: Sequence[str] = ("none", "oracle", "estimate")) -> dict[str, float]:
    """Evaluate every test prior of the configured data set on random float32 logits (N, E, C) of its full test
    set, as test_all_*.py does after the one forward pass; prints seconds and peak memory."""
    from longtail.data_loader.profiles import CIFAR_TEST_PRIORS, DATASET_PRIORS
    from longtail.core.logits import masks_for
    from longtail.evaluation.report import prior_reports
    from longtail.evaluation.hooks import PosthocContext

    name = config["data_loader"]["type"]
    dataset_args, _ = split_loader_args(config["data_loader"])
    test = synthetic_dataset(name, "test", seed=1, args={**dataset_args, "image_size": 8})
    counts = dataset_info(name, dataset_args)["cls_num_list"]
    experts = int(config["arch"].get("args", {}).get("num_experts", 1))
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(len(test), experts, test.num_classes, generator=gen)).to(device)
    targets = test.targets.to(device)
    logits[torch.arange(len(test)), :, test.targets] += 4.0  # a model that is mostly right
    priors = list(DATASET_PRIORS.get(name, CIFAR_TEST_PRIORS))
    subsets = {p: test.test_prior_indices(p, counts) for p in priors}
    reset_peak_memory(device)
    before = peak_memory_mb(device)
    synchronize(device)
    start = time.perf_counter()
    rows = prior_reports(logits, targets, subsets, masks_for(counts, config["evaluation"]), corrections,
                         context=PosthocContext(counts, config["evaluation"]))
    synchronize(device)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "peak_memory_mib": peak_memory_mb(device), "logits_mib": logits.numel() * 4 / 2**20}
    print(f"{name}: {len(test)} test images x {experts} experts x {test.num_classes} classes (logits "
          f"{result['logits_mib']:.0f} MiB float32); {len(priors)} priors x {len(corrections)} corrections = {len(rows)} reports in "
          f"{seconds:.1f} s; peak memory {result['peak_memory_mib']:.0f} MiB (before: {before:.0f} MiB)")
    return result


def schedule_estimate(config: dict[str, Any], data: DataBundle, result: dict[str, float]) -> dict[str, Any]:
    """Expected wall time of the config's whole schedule from the measured rates: every epoch of training plus a
    validation pass every ``trainer.val_period`` epochs."""
    epochs = int(config["trainer"]["epochs"])
    val_period = int(config["trainer"].get("val_period", 1) or 0)
    validations = epochs // val_period if val_period > 0 else 0
    test_images = test_set_size(config, data)
    seconds = epochs * result["train_epoch_s_estimate"] + validations * test_images / result["eval_images_per_s"]
    return {"epochs": epochs, "validations": validations, "schedule_hours": float(f"{seconds / 3600:.4g}")}


def test_set_size(config: dict[str, Any], data: DataBundle) -> int:
    """Images of the configured test set (its registered size when synthetic data was capped)."""
    if not data.test_set.name.endswith("/synthetic"):
        return len(data.test_set)
    dataset_args, _ = split_loader_args(config["data_loader"])
    info = dataset_info(config["data_loader"]["type"], dataset_args)
    return int(info["num_classes"]) * int(info["test_per_class"])


def benchmark_pipeline(args: argparse.Namespace, device: torch.device) -> dict[str, dict[str, Any]]:
    """Benchmark every SGD stage of a pipeline in order; each stage's state after its timed steps is written as the
    checkpoint its later stages read (exact paths, as the pipeline runner links them)."""
    from longtail.pipeline import SeedState, load_pipeline, stage_config, stage_key

    pipeline = load_pipeline(args.pipeline)
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="benchmark-") as folder:
        state = SeedState(Path(folder), 0)
        for stage in pipeline.stages:
            config = stage_config(stage, 1, state, set_overrides(args))
            key = stage_key(stage)
            if stage_class(config) is not Trainer:
                print(f"stage {stage.name} ({key}): no SGD training (one pass over its data), not timed")
                records[key] = {"training": False}
                continue
            trainer, records[key] = benchmark_config(args, config, device, label=f"{stage.name} ({key})")
            run_dir = Path(folder) / stage.name
            save_checkpoint(trainer.state(1, 0), run_dir / "last.pth")
            state.record(stage.name, run_dir, True)
    return records


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), else the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_record(path: Path, records: dict[str, dict[str, Any]], device: torch.device, args: argparse.Namespace) -> None:
    """Merge ``records`` into the JSON file ``path`` (atomically), with the machine and the command that made them."""
    data = json.loads(path.read_text()) if path.is_file() else {"configs": {}}
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    command = "python -m tools.benchmark " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("benchmark.py") else None
    for key, record in records.items():
        data["configs"][key] = {**record, "device": device.type, "machine": machine, "threads": torch.get_num_threads(),
                                "torch": torch.__version__, "date": date.today().isoformat(),
                                "synthetic": bool(args.synthetic), **({"command": command} if command else {})}
    data["configs"] = dict(sorted(data["configs"].items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
    print(f"recorded {len(records)} config(s) in {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tools.benchmark``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
