"""In-memory image data sets (CIFAR-10/100-LT, Fashion-MNIST-LT) read from the official on-disk formats."""
from __future__ import annotations

import contextlib
import gzip
import math
import hashlib
import pickle
import shutil
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from longtail.data_loader.augment import normalize
from longtail.data_loader.profiles import lt_class_counts, select_per_class, shifted_prior_counts
from longtail.utils.errors import ConfigError, DataError, DataNotFoundError
from longtail.registry import DATASETS
from longtail.utils.seed import Stream, numpy_generator


# Official checksums (torchvision's lists for the CIFAR pickles; decompressed idx files for Fashion-MNIST).
CIFAR10_FILES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR100_FILES = {
    "train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
FMNIST_FILES = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a", "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a", "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FMNIST_SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian package dataset-fashion-mnist

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # CIFAR-10 stats, used for both (spec)
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)


@dataclass
class ImageTensorDataset:
    """A whole split as one uint8 tensor (N, C, H, W) plus int64 targets, kept on one device."""

    loader_kind: ClassVar[str] = "tensor"  # data_loader.loader.LOADERS entry that iterates it

    images: torch.Tensor
    targets: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    class_names: list[str] = field(default_factory=list)
    split_seed: int = 0
    input: Any = None  # the model's preprocessing (data_loader/factory.py InputSpec): resize on the device

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image as the model receives it."""
        if self.input is not None:
            return (self.input.channels or self.images.shape[1], self.input.size, self.input.size)
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def with_input(self, spec: Any) -> "ImageTensorDataset":
        """Batches resized to the model's input (``spec``) and normalised with its mean and std."""
        self.input, self.mean, self.std = spec, spec.mean, spec.std
        return self

    def model_input(self, images: torch.Tensor, channels_last: bool = False, train: bool = True,
                    views: Any = None) -> torch.Tensor:
        """uint8 batch -> normalised float batch the model takes: channels repeated to the model's count, resized
        to its size (training: the whole image; evaluation: short side to ``resize``, centre crop), bilinear /
        bicubic resampling with antialiasing (it commutes with the per-channel normalisation). ``views`` (a
        TEST_VIEWS entry) turns each image into several (B * V images, the views of an image consecutive)."""
        spec = self.input
        if spec is not None and spec.channels and images.shape[1] != spec.channels:
            images = images.expand(-1, spec.channels, -1, -1)
        out = normalize(images, self.mean, self.std, channels_last and spec is None and views is None)
        if views is not None:
            size, mode = (spec.size, spec.interpolation) if spec is not None else (images.shape[-1], "bilinear")
            out = views.tensor(out, size, mode)
            return out.contiguous(memory_format=torch.channels_last) if channels_last else out
        if spec is None:
            return out
        if out.shape[-1] != spec.size or out.shape[-2] != spec.size:
            out = resize_batch(out, spec.size if train else spec.resize, spec.interpolation)
            if not train:
                top, left = (out.shape[-2] - spec.size) // 2, (out.shape[-1] - spec.size) // 2
                out = out[..., top:top + spec.size, left:left + spec.size]
        return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    @property
    def cls_num_list(self) -> list[int]:
        """Images per class, counted from the targets (what every loss and evaluator receives)."""
        return torch.bincount(self.targets.cpu(), minlength=self.num_classes).tolist()

    def to(self, device: torch.device | str) -> "ImageTensorDataset":
        """Move images and targets to ``device`` (in place) and return self."""
        self.images, self.targets = self.images.to(device), self.targets.to(device)
        return self

    def test_prior_indices(self, prior: str, train_counts: Sequence[int] | None = None) -> torch.Tensor:
        """Indices of the shifted test set ``prior`` (forwardK / uniform / backwardK) inside this balanced split.

        Class order is the training-frequency order by construction, so ``train_counts`` is not needed here.
        """
        counts = self.cls_num_list
        if prior == "uniform":
            return torch.arange(len(self))
        if len(set(counts)) != 1:
            raise DataError(f"test prior {prior!r} needs a balanced test split, but {self.name} has counts "
                             f"between {min(counts)} and {max(counts)} per class")
        wanted = shifted_prior_counts(prior, counts[0], self.num_classes)
        return torch.from_numpy(select_per_class(self.targets.cpu().numpy(), wanted, self.split_seed)).long()


def resize_batch(images: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
    """Resize a float batch so that its short side is ``size`` (antialiased bilinear / bicubic, or nearest)."""
    h, w = images.shape[-2:]
    out_h, out_w = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    if interpolation == "nearest":
        return F.interpolate(images, size=(out_h, out_w), mode="nearest")
    return F.interpolate(images, size=(out_h, out_w), mode=interpolation, align_corners=False, antialias=True)


def md5sum(path: Path | None = None, data: bytes | None = None) -> str:
    """MD5 hex digest of a file or a byte string."""
    digest = hashlib.md5()
    if data is not None:
        digest.update(data)
    else:
        with open(path, "rb") as handle:  # type: ignore[arg-type]
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


_WARNED: set[str] = set()


def data_warning(path: Path | str, message: str) -> None:
    """A one-line UserWarning attributed to the data file itself, at most once per file and message."""
    key = f"{path}: {message}"
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn_explicit(key, UserWarning, str(path), 0)


def warn_if_modified(path: Path, expected: str, actual: str) -> None:
    """Warn (naming the file) when a file in the official format differs from the official release."""
    if expected != actual:
        data_warning(path, f"checksum {actual} differs from the official release ({expected}); loading it anyway "
                           "- results may not be comparable with published numbers")


def _missing_data(kind: str, folder: Path, files: Sequence[str], how: str) -> DataNotFoundError:
    """Build the error raised when a data set's files are missing."""
    return DataNotFoundError(
        f"{kind} not found: expected {', '.join(files)} in {folder}. {how} "
        "Then point data_loader.args.data_dir (or --data_dir) at that folder."
    )


def _try_torchvision_download(kind: str, root: Path) -> bool:
    """Try torchvision's downloader; False (never an exception) when offline. A failed attempt leaves nothing behind
    (no empty data folder that a later run would take for the data set)."""
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fmnist": tvd.FashionMNIST}[kind]
    missing = [p for p in (root, *root.parents) if not p.exists()]  # folders this attempt creates
    before = set(root.rglob("*")) if root.exists() else set()
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
        return True
    except Exception as exc:  # offline, DNS failure, HTTP error...
        for path in sorted(set(root.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        for folder in missing:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        warnings.warn(f"download of {kind} into {root} failed: {exc}", stacklevel=3)
        return False


def _cifar_folder(data_dir: Path, num_classes: int) -> Path:
    """The folder holding the python pickles (accepts the parent folder or the folder itself)."""
    sub = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    return data_dir if (data_dir / ("test_batch" if num_classes == 10 else "test")).exists() else data_dir / sub


def read_cifar(data_dir: str | Path, num_classes: int, train: bool, download: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read the official CIFAR python pickles -> (uint8 images N x 3 x 32 x 32, int64 labels, class names)."""
    data_dir = Path(data_dir)
    files = CIFAR10_FILES if num_classes == 10 else CIFAR100_FILES
    folder = _cifar_folder(data_dir, num_classes)
    if not all((folder / f).is_file() for f in files):
        kind = f"cifar{num_classes}"
        if not (download and _try_torchvision_download(kind, data_dir)):
            url = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" if num_classes == 10
                   else "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
            raise _missing_data(f"CIFAR-{num_classes}", folder, list(files),
                                f"Download {url} and extract it into {data_dir} (or enable data_loader.args.download on a machine with internet).")
        folder = _cifar_folder(data_dir, num_classes)
    if num_classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        label_key, meta_name, meta_key = "labels", "batches.meta", "label_names"
    else:
        names = ["train"] if train else ["test"]
        label_key, meta_name, meta_key = "fine_labels", "meta", "fine_label_names"
    images, labels = [], []
    for name in names + [meta_name]:
        path = folder / name
        warn_if_modified(path, files[name], md5sum(path))
    for name in names:
        entry = _read_pickle(folder / name, (label_key, "data"))
        try:
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        except ValueError as exc:
            raise DataError(f"{folder / name}: the 'data' array is not N x 3072 uint8 images ({exc}); re-download "
                            "the official CIFAR python version") from None
        labels.extend(entry[label_key])
    class_names = list(_read_pickle(folder / meta_name, (meta_key,))[meta_key])
    return np.concatenate(images), np.asarray(labels, dtype=np.int64), class_names


def _read_pickle(path: Path, keys: Sequence[str]) -> dict[str, Any]:
    """One CIFAR python pickle as a dict holding ``keys``; unreadable or foreign files raise DataError naming them."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except Exception as exc:  # truncated (EOFError / UnpicklingError), random bytes (UnicodeDecodeError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path} is not a readable CIFAR python pickle ({reason}); re-download and extract the "
                        "official archive") from None
    missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise DataError(f"{path} lacks the key(s) {missing} of the official CIFAR python format")
    return entry


def read_idx(path: Path) -> tuple[np.ndarray, bytes]:
    """Read an idx file (optionally gzipped) -> (array, decompressed bytes for the checksum)."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:  # truncated download, not a gzip file
            raise DataError(f"{path} is not a complete gzip file ({exc}); download it again") from None
    return parse_idx_bytes(data, str(path)), data


def parse_idx_bytes(data: bytes, name: str = "idx") -> np.ndarray:
    """Decode the idx format: zero bytes, dtype code 0x08 (uint8), ndim, big-endian dims, then the data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{name} is not a uint8 idx file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - offset != expected:
        raise DataError(f"{name}: header says {dims} ({expected} bytes) but the file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(name: str, folders: Sequence[Path]) -> Path | None:
    """First existing ``name`` or ``name.gz`` in the folders (also their FashionMNIST/raw sub-folder)."""
    for folder in folders:
        for sub in (folder, folder / "FashionMNIST" / "raw", folder / "raw"):
            for candidate in (sub / name, sub / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    return None


def read_fashion_mnist(data_dir: str | Path, train: bool, download: bool = False,
                       fallback: bool = True) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read Fashion-MNIST idx files from data_dir, else (``fallback``: data_dir is the default location) the Debian
    package's folder, else download via torchvision. An explicit data_dir without the files is an error."""
    data_dir = Path(data_dir)
    prefix = "train" if train else "t10k"
    wanted = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    folders = [data_dir] + ([Path(p) for p in FMNIST_SYSTEM_DIRS] if fallback else [])
    paths = [_find_idx(n, folders) for n in wanted]
    if any(p is None for p in paths) and download and _try_torchvision_download("fmnist", data_dir):
        paths = [_find_idx(n, folders) for n in wanted]
    if any(p is None for p in paths):
        raise _missing_data("Fashion-MNIST", data_dir, [f"{n}[.gz]" for n in wanted],
                            "Install the Debian package (apt-get install dataset-fashion-mnist, files land in "
                            "/usr/share/datasets/fashion-mnist) or copy the four idx files from "
                            "https://github.com/zalandoresearch/fashion-mnist/tree/master/data/fashion into it.")
    fallback = [p for p in paths if data_dir.resolve() not in p.resolve().parents]  # type: ignore[union-attr]
    if fallback:
        data_warning(data_dir, f"no Fashion-MNIST idx files here; using {fallback[0].parent} instead (the Debian "
                               "package's copy); point data_loader.args.data_dir (--data_dir) there to silence this")
    arrays = []
    for name, path in zip(wanted, paths):
        array, raw = read_idx(path)  # type: ignore[arg-type]
        warn_if_modified(path, FMNIST_FILES[name], md5sum(data=raw))
        arrays.append(array)
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels")
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    return images[:, None].copy(), labels.astype(np.int64), names


def make_lt_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, train: bool, imb_factor: float,
                    imb_type: str, split_seed: int, name: str, mean: tuple[float, ...], std: tuple[float, ...],
                    class_names: list[str]) -> ImageTensorDataset:
    """Subsample a balanced training split to the LT profile (test splits stay complete and balanced)."""
    if train:
        n_max = len(labels) // num_classes
        counts = lt_class_counts(n_max, num_classes, imb_factor, imb_type)
        if min(counts) < 1:
            raise ConfigError(f"data_loader.args.imb_factor = {imb_factor} leaves class {counts.index(min(counts))} "
                              f"without training images ({n_max} per class before subsampling); use a larger factor")
        keep = select_per_class(labels, counts, split_seed)
        images, labels = images[keep], labels[keep]
    return ImageTensorDataset(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), num_classes,
                              mean, std, name, class_names, split_seed)


def holdout_count(n: int, fraction: float, max_per_class: int | None) -> int:
    """Images of a class with n training images that go to the held-out part (>= 1 when n >= 2, never all);
    ``max_per_class`` None means no cap."""
    if fraction <= 0 or n < 2:
        return 0
    cap = n if max_per_class is None else max_per_class
    return max(1, min(cap, int(math.floor(n * fraction)), n - 1))


def holdout_split(targets: torch.Tensor, num_classes: int, fraction: float, max_per_class: int | None,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept indices, held-out indices), both ascending; per class a seeded random choice of holdout_count images."""
    labels = targets.cpu().numpy()
    rng = numpy_generator(seed, Stream.HOLDOUT)
    held = []
    for cls in range(num_classes):
        members = np.flatnonzero(labels == cls)
        held.append(rng.permutation(members)[:holdout_count(len(members), fraction, max_per_class)])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held_idx)
    return torch.from_numpy(keep).long(), torch.from_numpy(held_idx).long()


def check_holdout(fraction: float, max_per_class: int | None, split: str) -> None:
    """Clear errors for bad held-out split arguments of an LT builder."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ConfigError(f"data_loader.args.holdout_fraction must be in [0, 1), got {fraction!r}")
    if max_per_class is not None and (isinstance(max_per_class, bool) or not isinstance(max_per_class, int)
                                      or max_per_class < 1):
        raise ConfigError(f"data_loader.args.holdout_max_per_class must be a positive integer or null, got {max_per_class!r}")
    if split == "val" and fraction <= 0:
        raise ConfigError("the 'val' split needs a held-out part: set data_loader.args.holdout_fraction > 0 "
                          "(e.g. 0.1; off by default so the published training sets stay unchanged)")


def holdout_part(data: ImageTensorDataset, split: str, fraction: float, max_per_class: int | None,
                 seed: int) -> ImageTensorDataset:
    """The LT training split minus its seeded held-out part ('train') or that part ('val'); unchanged when off."""
    if fraction <= 0:
        return data
    keep, held = holdout_split(data.targets, data.num_classes, fraction, max_per_class, seed)
    idx = keep if split == "train" else held
    return ImageTensorDataset(data.images[idx], data.targets[idx], data.num_classes, data.mean, data.std, data.name,
                              list(data.class_names), data.split_seed)


def _register_lt(name: str, reader: Callable[..., tuple[np.ndarray, np.ndarray, list[str]]], num_classes: int,
                 default_dir: str, mean: tuple[float, ...], std: tuple[float, ...], image_shape: tuple[int, int, int],
                 train_per_class: int, test_per_class: int) -> None:
    """Register one LT data set builder ``name(split, data_dir, imb_factor, imb_type, split_seed, download)``."""

    def build(split: str = "train", data_dir: str = default_dir, imb_factor: float = 0.01, imb_type: str = "exp",
              split_seed: int = 0, download: bool = True, holdout_fraction: float = 0.0,
              holdout_max_per_class: int | None = None, holdout_seed: int = 0) -> ImageTensorDataset:
        if split not in ("train", "val", "test"):
            raise ConfigError(f"{name}: split must be 'train', 'val' or 'test', got {split!r}")
        check_holdout(holdout_fraction, holdout_max_per_class, split)
        images, labels, class_names = reader(data_dir, train=split != "test", download=download,
                                             fallback=Path(data_dir) == Path(default_dir))
        data = make_lt_dataset(images, labels, num_classes, split != "test", imb_factor, imb_type, split_seed,
                               f"{name}/{split}", mean, std, class_names)
        return data if split == "test" else holdout_part(data, split, holdout_fraction, holdout_max_per_class,
                                                         holdout_seed)

    build.__name__ = name
    build.__doc__ = f"{name}: long-tailed training split (exp profile, seeded subset) or the balanced test split."
    build.info = {"num_classes": num_classes, "image_shape": image_shape, "mean": mean, "std": std,  # type: ignore[attr-defined]
                  "train_per_class": train_per_class, "test_per_class": test_per_class}
    DATASETS.register(name)(build)


_register_lt("cifar10_lt", lambda d, train, download, fallback: read_cifar(d, 10, train, download), 10, "data/cifar10",
             CIFAR_MEAN, CIFAR_STD, (3, 32, 32), 5000, 1000)
_register_lt("cifar100_lt", lambda d, train, download, fallback: read_cifar(d, 100, train, download), 100,
             "data/cifar100",
             CIFAR_MEAN, CIFAR_STD, (3, 32, 32), 500, 100)
_register_lt("fmnist_lt", read_fashion_mnist, 10, "data/fashion_mnist", FMNIST_MEAN, FMNIST_STD, (1, 28, 28), 6000, 1000)


def dataset_info(name: str, args: dict) -> dict:
    """Shape facts of a configured data set without reading files: its builder's ``info`` plus training ``cls_num_list``.

    Builders whose facts depend on their arguments (wrappers such as ``subset``) provide ``info_for(args)``.
    """
    builder = DATASETS.get(name, where="data_loader.type")
    if hasattr(builder, "info_for"):
        return builder.info_for(args)  # type: ignore[attr-defined]
    info = dict(builder.info)  # type: ignore[attr-defined]
    counts = lt_class_counts(info["train_per_class"], info["num_classes"], args.get("imb_factor", 0.01),
                             args.get("imb_type", "exp"))
    fraction, cap = args.get("holdout_fraction", 0.0), args.get("holdout_max_per_class")
    if fraction:
        counts = [n - holdout_count(n, fraction, cap) for n in counts]
    info["cls_num_list"] = counts
    return info


def synthetic_dataset(name: str, split: str = "train", imb_factor: float = 0.01, seed: int = 0,
                      scale: float = 1.0, args: dict[str, Any] | None = None,
                      max_images: int | None = None) -> ImageTensorDataset:
    """Random uint8 images with a registered data set's shape and LT class counts (benchmarks, smoke tests).

    ``args`` (data_loader.args) adjust the shape (e.g. image_size); ``max_images`` keeps a random subset (with at
    least one image per class) so that ImageNet-sized profiles fit in memory.
    """
    info = dataset_info(name, args or {})
    per_class = max(1, int(info["train_per_class" if split == "train" else "test_per_class"] * scale))
    counts = lt_class_counts(per_class, info["num_classes"], imb_factor) if split == "train" else [per_class] * info["num_classes"]
    gen = torch.Generator().manual_seed(seed)
    targets = torch.repeat_interleave(torch.arange(info["num_classes"]), torch.tensor(counts))
    if max_images is not None and len(targets) > max_images:
        # every class keeps its first image (class-count based losses need n_c > 0); the rest is a random subset
        firsts = torch.cumsum(torch.tensor([0, *counts[:-1]]), 0)
        rest = torch.ones(len(targets), dtype=torch.bool)
        rest[firsts] = False
        others = rest.nonzero().squeeze(1)
        kept = others[torch.randperm(len(others), generator=gen)[:max(0, max_images - len(firsts))]]
        targets = targets[torch.cat([firsts, kept])].sort().values
    images = torch.randint(0, 256, (len(targets), *info["image_shape"]), generator=gen, dtype=torch.uint8)
    return ImageTensorDataset(images, targets, info["num_classes"], info["mean"], info["std"], f"{name}/{split}/synthetic")
