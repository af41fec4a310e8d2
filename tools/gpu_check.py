"""The device check: one command on a GPU machine (about 5-8 minutes on one H100/H200).

python -m tools.gpu_check [--out DIR] [--skip_tests] [--steps N]

1. the CUDA-only tests (``pytest -m gpu``: no host sync per step detected by CUDA's sync debug mode, fp16/bf16
   resume exactness, DDP with NCCL when 2+ GPUs are visible, compiled steps equal to eager);
2. a throughput table (train and eval images/s, peak memory) for BalPoE 3-expert ResNet-32 on CIFAR-100-LT
   (batch 128, synthetic data of the real shape and class counts) under each speed switch, and for ImageNet-LT
   ResNeXt-50 with 3 experts (in-memory synthetic 224 px images: the model's rate, not JPEG decoding);
3. JPEG decoding + the imagenet augmentation: images/s of the PIL worker path vs ``decode: device`` on synthetic
   500x375 JPEGs;
4. the time of evaluating every test prior of iNaturalist 2018 (24,426 x 3 x 8,142 logits) on the device;
5. foundation models: ViT-B/16 + AdaptFormer at 224 px (LIFT's ImageNet-LT config) with a frozen base vs full
   fine-tuning, compiled, a linear probe on cached features, and 3 adapter experts (random-initialised weights of the
   same architecture: speed only), with the time LIFT's 10-epoch schedule would take.
   ``--only ViT-B/16`` runs just these rows (about 5 minutes).

Prints Markdown (and writes ``gpu_check.md`` into ``--out``); paste it into the README's GPU section.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from tools.benchmark import benchmark_prior_evaluation, run_benchmark
from longtail.cli.common import run_tool
from longtail.core.build import resolve
from longtail.utils.config import apply_overrides, load_config
from longtail.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CIFAR = "configs/cifar100_ir100/balpoe_standard.json"
IMAGENET = "configs/imagenet_lt/balpoe_resnext50_standard.json"
LIFT = "configs/imagenet_lt/lift_clip_vit_b16.json"
BALANCED_ADAPTERS = "configs/imagenet_lt/balpoe_clip_vit_b16_adapters.json"
# foundation rows: random-initialised weights of the same architecture (the machine cannot download CLIP; the speed
# is the same), no text-initialised head (synthetic data has no class names); "_drop" removes top-level blocks
NO_WEIGHTS = {"arch.args.pretrained": None, "_drop": ["head_init"]}
LIFT_IMAGES = 115_846 * 10  # LIFT's ImageNet-LT schedule: 10 epochs of the training list
# (label, config, overrides): every switch of the table
SETTINGS: list[tuple[str, str, dict[str, Any]]] = [
    ("CIFAR-100-LT BalPoE, eager fp32, looped experts", CIFAR, {"trainer.amp": "off"}),
    ("CIFAR-100-LT BalPoE, eager bf16, looped experts", CIFAR, {"trainer.amp": "bf16"}),
    ("CIFAR-100-LT BalPoE, eager bf16, batched experts", CIFAR, {"trainer.amp": "bf16", "arch.args.batched_experts": True}),
    ("CIFAR-100-LT BalPoE, compile (inductor) bf16", CIFAR, {"trainer.amp": "bf16", "trainer.compile": "default"}),
    ("CIFAR-100-LT BalPoE, compile + CUDA graphs bf16", CIFAR, {"trainer.amp": "bf16", "trainer.compile": "reduce-overhead"}),
    ("CIFAR-100-LT BalPoE, compile + CUDA graphs bf16, batched", CIFAR,
     {"trainer.amp": "bf16", "trainer.compile": "reduce-overhead", "arch.args.batched_experts": True}),
    ("ImageNet-LT BalPoE ResNeXt-50 x3, eager fp32", IMAGENET, {"trainer.amp": "off"}),
    ("ImageNet-LT BalPoE ResNeXt-50 x3, eager bf16", IMAGENET, {"trainer.amp": "bf16"}),
    ("ImageNet-LT BalPoE ResNeXt-50 x3, compile bf16", IMAGENET, {"trainer.amp": "bf16", "trainer.compile": "default"}),
    ("ImageNet-LT LIFT ViT-B/16 224 px + AdaptFormer (frozen base), bf16", LIFT, {"trainer.amp": "bf16", **NO_WEIGHTS}),
    ("ImageNet-LT LIFT ViT-B/16 224 px + AdaptFormer (frozen base), compile bf16", LIFT,
     {"trainer.amp": "bf16", "trainer.compile": "default", **NO_WEIGHTS}),
    ("ImageNet-LT ViT-B/16 224 px full fine-tuning, bf16", LIFT, {"trainer.amp": "bf16", "arch.peft": {"type": "full", "args": {}}, **NO_WEIGHTS}),
    ("ImageNet-LT ViT-B/16 224 px linear probe on cached features, bf16", LIFT,
     {"trainer.amp": "bf16", "arch.peft": {"type": "linear", "args": {}}, "trainer.cache_features": True,
      "data_loader.args.augment": {"type": "none", "args": {}}, **NO_WEIGHTS}),
    ("ImageNet-LT balanced experts: 3 adapter experts on frozen ViT-B/16 (1.33 passes), bf16", BALANCED_ADAPTERS,
     {"trainer.amp": "bf16", **NO_WEIGHTS}),
]


def run_gpu_tests() -> int:
    """``pytest -m gpu`` in a fresh interpreter (its exit code)."""
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"], cwd=ROOT)


def setting_config(path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The resolved config of a setting (``_drop``: top-level blocks removed first)."""
    overrides = dict(overrides)
    config = load_config(ROOT / path)
    for key in overrides.pop("_drop", []):
        config.pop(key, None)
    return resolve(apply_overrides(config, list(overrides.items())))


def throughput_rows(device: torch.device, steps: int, warmup: int, only: str | None = None) -> list[dict[str, Any]]:
    """Benchmark every setting (``only``: those whose label contains it); a setting that fails (e.g. a compiler
    error) is reported, not fatal."""
    rows = []
    for label, path, overrides in SETTINGS:
        if only and only.lower() not in label.lower():
            continue
        config = setting_config(path, overrides)
        start = time.perf_counter()
        try:
            _, result = run_benchmark(config, device, steps, warmup, eval_batches=10, synthetic=True)
        except Exception as exc:  # noqa: BLE001 - one failing switch must not hide the others
            rows.append({"setting": label, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"})
            continue
        rows.append({"setting": label, **result, "wall_s": time.perf_counter() - start,
                     "batch": config["data_loader"]["args"]["batch_size"]})
        print(f"{label}: {result['train_images_per_s']:.0f} train images/s", flush=True)
    return rows


def decode_rates(device: torch.device, images: int = 1024, workers: int = 8) -> dict[str, float]:
    """Loader images/s (decode + imagenet augmentation + normalisation, batch 128) for decode 'pil' and 'device' on
    synthetic 500x375 JPEGs of 8 classes."""
    import tempfile

    import numpy as np
    from PIL import Image

    from longtail.data_loader.factory import build_data

    rates = {}
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        for i in range(images):
            folder = Path(root) / "train" / f"c{i % 8}"
            folder.mkdir(parents=True, exist_ok=True)
            smooth = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(smooth).resize((500, 375), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=90)
        (Path(root) / "test").symlink_to(Path(root) / "train")
        for decode in ("pil", "device"):
            config = resolve(apply_overrides(load_config(ROOT / "configs/custom/balpoe_resnet50_image_folder.json"), [
                ("data_loader.args.data_dir", root), ("data_loader.args.decode", decode),
                ("data_loader.args.num_workers", workers)]))
            loader = build_data(config, device).train_loader
            for _ in loader.batches(0):  # warm-up: workers start, cuDNN/nvJPEG initialise
                break
            torch.cuda.synchronize(device) if device.type == "cuda" else None
            start, seen = time.perf_counter(), 0
            for batch, _ in loader.batches(1):
                seen += batch.shape[0]
            torch.cuda.synchronize(device) if device.type == "cuda" else None
            rates[decode] = seen / (time.perf_counter() - start)
            print(f"decode {decode}: {rates[decode]:.0f} images/s", flush=True)
    return rates


def markdown(rows: list[dict[str, Any]], device: torch.device, priors: dict[str, float] | None,
             decode: dict[str, float] | None = None) -> str:
    """The table for the README."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [f"Device check on {name} (torch {torch.__version__}), `python -m tools.gpu_check`:", "",
             "| setting | batch | train images/s | epoch estimate | bare fwd+bwd images/s | eval images/s | peak memory |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | | failed: {r['error']} | | | | |")
            continue
        lines.append(f"| {r['setting']} | {r['batch']} | {r['train_images_per_s']:.0f} | "
                     f"{r['train_epoch_s_estimate']:.1f} s | {r['bare_images_per_s']:.0f} | {r['eval_images_per_s']:.0f} | "
                     f"{r['peak_memory_mib'] / 1024:.1f} GiB |")
    lift = [r for r in rows if "LIFT" in r["setting"] and "error" not in r]
    for r in lift:
        lines += ["", f"{r['setting']}: LIFT's ImageNet-LT schedule (10 epochs x 115,846 images) would take "
                      f"{LIFT_IMAGES / r['train_images_per_s'] / 60:.1f} min of training at {r['train_images_per_s']:.0f} "
                      "images/s (target: under 15 min, about 1,300 images/s on one H100 in bf16)"]
    if decode:
        lines += ["", f"ImageNet-style loading (500x375 JPEGs, random resized crop + flip + jitter, batch 128, 8 workers): "
                      f"PIL workers {decode['pil']:.0f} images/s, decode on the device {decode['device']:.0f} images/s"]
    if priors:
        lines += ["", f"iNaturalist 2018, every test prior x (none, oracle, EM) from 3-expert logits: "
                      f"{priors['seconds']:.1f} s, peak memory {priors['peak_memory_mib'] / 1024:.1f} GiB"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of the device check."""
    p = argparse.ArgumentParser(description="CUDA tests + throughput table (run on a GPU machine).")
    p.add_argument("--out", help="folder for gpu_check.md")
    p.add_argument("--skip_tests", action="store_true", help="only the throughput table")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per setting")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per setting (compilation happens here)")
    p.add_argument("-d", "--device", default="cuda", help="cuda (default); cpu only to try the script itself")
    p.add_argument("--only", help="only the throughput settings whose label contains this text (e.g. ViT-B/16); "
                                  "skips the decode and prior-evaluation figures")
    return p


def run(args: argparse.Namespace) -> int:
    """Tests, then figures."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("no CUDA GPU is visible: the device check runs on a GPU machine (CI never runs it)")
    code = 0 if args.skip_tests else run_gpu_tests()
    rows = throughput_rows(device, args.steps, args.warmup, args.only)
    if args.only:
        text = markdown(rows, device, None)
    else:
        priors = benchmark_prior_evaluation(resolve(load_config(ROOT / "configs/inat2018/balpoe_resnet50_standard.json")),
                                            device)
        text = markdown(rows, device, priors, decode_rates(device))
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.md").write_text(text + "\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tools.gpu_check``."""
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
