"""Shared fixtures: tiny data sets written in the official on-disk formats, and tiny configs."""
from __future__ import annotations

import copy
import gzip
import json
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# one thread count for the whole suite (runs choose theirs from the machine's load otherwise: results in float32
# depend slightly on it)
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, min(2, torch.get_num_threads()))))
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def class_images(num_classes: int, per_class: int, seed: int, shape: tuple[int, ...] = (3, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Images whose mean brightness encodes the class (learnable), labels interleaved like the real files."""
    rng = np.random.RandomState(seed)
    labels = np.tile(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    base = (labels * (200 // max(num_classes - 1, 1)) + 20)[:, None]
    noise = rng.randint(-20, 21, size=(len(labels), int(np.prod(shape))))
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    return images.reshape(len(labels), *shape), labels


def write_cifar(root: Path, num_classes: int, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """Write CIFAR-10 (5 train batches + test_batch + batches.meta) or CIFAR-100 (train/test/meta) python pickles."""
    train_x, train_y = class_images(num_classes, train_per_class, seed)
    test_x, test_y = class_images(num_classes, test_per_class, seed + 1)
    names = [f"class{i}" for i in range(num_classes)]
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i, (xs, ys) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)), start=1):
            with open(folder / f"data_batch_{i}", "wb") as f:
                pickle.dump({"data": xs.reshape(len(xs), -1), "labels": ys.tolist()}, f)
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({"data": test_x.reshape(len(test_x), -1), "labels": test_y.tolist()}, f)
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({"label_names": names}, f)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        for split, xs, ys in (("train", train_x, train_y), ("test", test_x, test_y)):
            with open(folder / split, "wb") as f:
                pickle.dump({"data": xs.reshape(len(xs), -1), "fine_labels": ys.tolist()}, f)
        with open(folder / "meta", "wb") as f:
            pickle.dump({"fine_label_names": names}, f)
    return root


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fmnist(root: Path, train_per_class: int, test_per_class: int, gz: bool = True) -> Path:
    """Write the four Fashion-MNIST idx files (gzipped like the official release, or raw)."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, per_class, seed in (("train", train_per_class, 3), ("t10k", test_per_class, 4)):
        images, labels = class_images(10, per_class, seed, (28, 28))
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CIFAR-10 in the official python-pickle layout: 60 train / 20 test images per class."""
    return write_cifar(tmp_path_factory.mktemp("cifar10"), 10, 60, 20)


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CIFAR-100 in the official layout: 20 train / 10 test images per class."""
    return write_cifar(tmp_path_factory.mktemp("cifar100"), 100, 20, 10)


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny gzipped Fashion-MNIST idx files: 60 train / 20 test images per class."""
    return write_fmnist(tmp_path_factory.mktemp("fmnist"), 60, 20)


def with_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with dotted keys (``a.b.c``) set to the given values."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return config


def tiny_config(data_dir: Path, save_dir: Path, dataset: str = "cifar10_lt", epochs: int = 2, **overrides: Any) -> dict[str, Any]:
    """A fast BalPoE config on tiny data (ResNet-8, width 4, 3 experts, mixup)."""
    config = {
        "name": "tiny_balpoe",
        "seed": 1,
        "arch": {"type": "resnet_cifar", "args": {"depth": 8, "stem_width": 4, "num_experts": 3}},
        "data_loader": {"type": dataset, "args": {"data_dir": str(data_dir), "imb_factor": 0.1, "batch_size": 32,
                                                  "download": False,
                                                  "augment": {"type": "standard", "args": {"padding": 2, "flip": True, "rotation": 10}}}},
        "loss": {"type": "balpoe", "args": {"tau_list": [0, 1, 2]}, "tau_min": 0, "tau_max": 2},
        "optimizer": {"type": "sgd", "args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}},
        "lr_scheduler": {"type": "warmup_step", "args": {"step1": 3, "step2": 4, "gamma": 0.1, "warmup_epoch": 1}},
        "combiner": {"type": "mixup", "args": {"alpha": 0.4}},
        "trainer": {"epochs": epochs, "save_dir": str(save_dir), "save_period": 1, "val_period": 1, "tensorboard": False},
        "evaluation": {"many_threshold": 40, "few_threshold": 15, "test_batch_size": 64},
    }
    return with_overrides(config, overrides)


def train_with_interrupt(argv: list[str], at: tuple[int, int]) -> int:
    """Run train_main with a Ctrl-C raised after batch ``at = (epoch, step)``; returns the exit code (130)."""
    import longtail.trainer.trainer as trainer_module
    from longtail.cli.train import main as train_main

    original = trainer_module.Trainer.__init__

    def init_with_interrupt(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.callbacks.append(lambda tr, epoch, step: signal.raise_signal(signal.SIGINT) if (epoch, step) == at else None)

    trainer_module.Trainer.__init__ = init_with_interrupt
    try:
        return train_main(argv)
    finally:
        trainer_module.Trainer.__init__ = original


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a config dict as JSON."""
    path.write_text(json.dumps(config, indent=2))
    return path


# ----------------------------------------------------------------------------- image-file data sets (txt lists)
LIST_TRAIN_COUNTS = (12, 9, 6, 4, 3, 2)  # 6 classes, imbalance ratio 6


def write_jpeg(path: Path, label: int, index: int, num_classes: int) -> None:
    """A small JPEG (8 to 64 px per side, varied aspect) whose colour encodes the class."""
    rng = np.random.RandomState(index)
    w, h = 8 + (index * 7) % 57, 8 + (index * 11) % 57
    base = np.array([40 + 180 * label // max(num_classes - 1, 1), 120, 220 - 180 * label // max(num_classes - 1, 1)])
    pixels = np.clip(base + rng.randint(-15, 16, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def write_image_lists(root: Path, prefix: str, train_counts: tuple[int, ...] = LIST_TRAIN_COUNTS,
                      test_per_class: int = 4, val_per_class: int = 2) -> tuple[Path, Path]:
    """JPEGs under root/images/{train,val}/c<k>/ and <prefix>{train,val,test}.txt lists under root/txt."""
    data_dir, txt_dir = root / "images", root / "txt"
    txt_dir.mkdir(parents=True, exist_ok=True)
    num_classes = len(train_counts)
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    counter = 0
    for label, n_train in enumerate(train_counts):
        for split, folder, n in (("train", "train", n_train), ("val", "train", val_per_class), ("test", "val", test_per_class)):
            for i in range(n):
                rel = f"{folder}/c{label}/{split}_{i}.jpg"
                write_jpeg(data_dir / rel, label, counter, num_classes)
                counter += 1
                lines[split].append(f"{rel} {label}")
    for split, rows in lines.items():
        (txt_dir / f"{prefix}{split}.txt").write_text("\n".join(rows) + "\n")
    return data_dir, txt_dir


@pytest.fixture(scope="session")
def imagenet_lt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake ImageNet-LT: 6 classes (train 12..2 images, test 4, val 2 per class) in the official list format."""
    root = tmp_path_factory.mktemp("imagenet_lt")
    write_image_lists(root, "ImageNet_LT_")
    return root


def image_list_config(root: Path, save_dir: Path, dataset: str = "imagenet_lt", epochs: int = 1, **overrides: Any) -> dict[str, Any]:
    """A tiny BalPoE config on a fake txt-list data set: narrow ResNet-10 (2 experts), 16-pixel crops."""
    config = tiny_config(root, save_dir, epochs=epochs)
    config["name"] = f"tiny_{dataset}"
    config["arch"] = {"type": "resnet10", "args": {"num_experts": 2, "layer3_output_dim": 8, "layer4_output_dim": 8}}
    config["data_loader"] = {"type": dataset, "args": {
        "data_dir": str(root / "images"), "txt_dir": str(root / "txt"), "num_classes": 6, "image_size": 16,
        "resize_size": 18, "batch_size": 8, "num_workers": 0, "augment": {"type": "imagenet", "args": {"color_jitter": 0.4}}}}
    config["loss"] = {"type": "balpoe", "args": {"tau_list": [0, 2]}, "tau_min": 0, "tau_max": 2}
    config["trainer"].update({"save_period": 0, "val_period": 1})
    config["evaluation"] = {"many_threshold": 8, "few_threshold": 4, "test_batch_size": 16}
    return with_overrides(config, overrides)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped on machines without it (CI), run by tools/gpu_check.py."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run python -m tools.gpu_check on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
