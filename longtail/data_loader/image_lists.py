"""Image-file data sets: txt lists (ImageNet-LT, iNaturalist 2018, Places-LT, custom lists) and image folders.

Each line of a list is ``relative/path/to/image.jpg <integer label>`` (docs/methods.md, data sets); paths are relative to
``data_dir``, list files live in ``txt_dir``. With ``shards`` (a folder written by lt-make-shards) the training split
is read from WebDataset tar shards instead, sample for sample the same (data_loader/shards.py). Images are decoded lazily (PIL, RGB) by ``ImageListLoader`` workers;
only paths and labels are held in memory (paths as one NumPy byte array, so forked workers do not copy them).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from longtail.data_loader.augment import normalize
from longtail.registry import DATASETS
from longtail.data_loader.official_lists import check_official
from longtail.utils.resources import find_shipped
from longtail.utils.errors import ConfigError, DataError, DataNotFoundError
from longtail.data_loader.profiles import CIFAR_TEST_PRIORS, DATASET_PRIORS, lt_class_counts, shifted_subset_indices

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INAT_MEAN, INAT_STD = (0.466, 0.471, 0.380), (0.195, 0.194, 0.192)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
DATA_TXT_HELP = "data_txt/README.md says where each official list comes from and how the image folders are laid out."


def read_image_list(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Parse ``relative/path label`` lines -> (paths, int64 labels); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"image list not found: {path}. {DATA_TXT_HELP}")
    content = path.read_bytes()
    check_official(path, content)
    try:
        text = content.decode()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file of 'relative/path label' lines") from None
    paths, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{path}:{number}: expected 'relative/path/to/image.jpg <integer label>', got {line!r}")
        paths.append(parts[0])
        labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"{path} holds no images")
    return paths, np.asarray(labels, dtype=np.int64)


@dataclass
class ImageListDataset:
    """Paths (relative to ``root``) + labels of one split; images are read per sample by the image-list loader."""

    loader_kind: ClassVar[str] = "image_list"

    root: Path
    paths: np.ndarray  # bytes (fixed-width 'S' dtype)
    targets: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    image_size: int = 224
    resize_size: int = 256
    source: str = ""
    prior_files: dict[str, Path] = field(default_factory=dict)
    prior_files_required: bool = False
    class_names: list[str] = field(default_factory=list)
    split_seed: int = 0
    interpolation: str = "bilinear"  # resampling of the resize / crop transforms
    _path_index: dict[bytes, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        bad = (self.targets < 0) | (self.targets >= self.num_classes)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0])
            raise DataError(f"{self.source}: label {int(self.targets[first])} of {self.relative_path(first)} is outside "
                             f"0..{self.num_classes - 1} (data_loader.args.num_classes = {self.num_classes})")

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one loaded (cropped) image."""
        return 3, self.image_size, self.image_size

    @property
    def cls_num_list(self) -> list[int]:
        """Images per class, counted from the labels."""
        return torch.bincount(self.targets, minlength=self.num_classes).tolist()

    def to(self, device: torch.device | str) -> "ImageListDataset":
        """Images stay on disk; the loader moves each decoded batch to its device."""
        return self

    def with_input(self, spec: Any) -> "ImageListDataset":
        """Decode and transform at the model's input size (``spec``: data_loader/factory.py InputSpec)."""
        return dataclasses.replace(self, image_size=spec.size, resize_size=spec.resize, mean=spec.mean, std=spec.std,
                                   interpolation=spec.interpolation)

    def model_input(self, images: torch.Tensor, channels_last: bool = False, train: bool = True) -> torch.Tensor:
        """Decoded uint8 batch (already at the model's size) -> normalised float batch."""
        return normalize(images, self.mean, self.std, channels_last)

    def relative_path(self, index: int) -> str:
        """The path of sample ``index`` as written in the list."""
        return self.paths[index].decode()

    def read_bytes(self, index: int) -> bytes:
        """The image file of sample ``index`` as bytes (what decode "device" and the shard writer read)."""
        path = self.root / self.relative_path(index)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DataNotFoundError(f"image not found: {path} (listed in {self.source}); check data_loader.args.data_dir "
                                    f"({self.root}). {DATA_TXT_HELP}") from None

    def load_image(self, index: int) -> Image.Image:
        """Decode sample ``index`` as an RGB PIL image; a missing file names its full path and the list."""
        path = self.root / self.relative_path(index)
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise DataNotFoundError(f"image not found: {path} (listed in {self.source}); check data_loader.args.data_dir "
                                    f"({self.root}). {DATA_TXT_HELP}") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot decode image {path} (listed in {self.source}): {exc}") from None

    def check_first_image(self) -> None:
        """Fail at build time (not mid-epoch) when data_dir is wrong: the first listed image must exist."""
        path = self.root / self.relative_path(0)
        if not path.is_file():
            raise DataNotFoundError(f"image not found: {path} (first entry of {self.source}); point "
                                    f"data_loader.args.data_dir (or --data_dir) at the folder the list's paths are "
                                    f"relative to. {DATA_TXT_HELP}")

    def _index_of_path(self) -> dict[bytes, int]:
        """Path -> index in this split (built once, for mapping shifted lists)."""
        if self._path_index is None:
            self._path_index = {p: i for i, p in enumerate(self.paths.tolist())}
        return self._path_index

    def test_prior_indices(self, prior: str, train_counts: Sequence[int] | None = None) -> torch.Tensor:
        """Indices of test prior ``prior`` inside this (union) test split.

        The prior's list file is used when it exists (each line is looked up by path); otherwise 'uniform' is the
        whole split and other priors are drawn with the spec's procedure from the training counts — allowed for
        custom data sets only, because the benchmarks' published lists cannot be regenerated image by image.
        """
        file = self.prior_files.get(prior)
        if file is not None and file.is_file():
            return self._indices_from_list(file)
        if prior == "uniform":  # the test split itself is the uniform set
            return torch.arange(len(self))
        if self.prior_files_required or train_counts is None:
            where = file or f"a list file for {prior!r}"
            raise DataNotFoundError(
                f"shifted test list not found: {where}. Copy the official list into data_loader.args.txt_dir or create "
                f"one with: python -m longtail.cli.make_test_priors --test_list {self.source} --train_list <train list>. "
                f"{DATA_TXT_HELP}")
        return torch.from_numpy(shifted_subset_indices(self.targets.numpy(), train_counts, prior, self.split_seed)).long()

    def _indices_from_list(self, file: Path) -> torch.Tensor:
        """Map every line of a shifted list onto this split's indices (paths must occur in the split with the same label)."""
        paths, labels = read_image_list(file)
        index = self._index_of_path()
        out = np.empty(len(paths), dtype=np.int64)
        for row, (path, label) in enumerate(zip(paths, labels)):
            i = index.get(path.encode())
            if i is None:
                raise DataError(f"{file}:{row + 1}: {path} is not in the test list {self.source}; the shifted lists must "
                                 "be subsets of the test list (data_loader.args.test_list)")
            if int(self.targets[i]) != int(label):
                raise DataError(f"{file}:{row + 1}: {path} has label {label} but {int(self.targets[i])} in {self.source}")
            out[row] = i
        return torch.from_numpy(out)


def has_shards(folder: str | Path | None, split: str) -> bool:
    """Whether ``folder`` holds WebDataset shards of ``split`` (data_loader/shards.py)."""
    from longtail.data_loader.shards import has_shards as found

    return found(folder, split)


def sharded_dataset(*args: Any, **kwargs: Any) -> ImageListDataset:
    """A split read from WebDataset shards (data_loader/shards.py imports this module, hence the late import)."""
    from longtail.data_loader.shards import sharded_dataset as build

    return build(*args, **kwargs)


def read_class_names(path: Path, num_classes: int) -> list[str]:
    """One class name per line (line k = label k) from ``<txt_dir>/<prefix>classnames.txt``; [] when there is no such file."""
    if not path.is_file():
        return []
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise DataError(f"{path} lists {len(names)} class names but the data set has {num_classes} classes")
    return names


def _list_dataset(list_file: Path, data_dir: Path, num_classes: int, name: str, mean: Sequence[float],
                  std: Sequence[float], image_size: int, resize_size: int, split_seed: int,
                  prior_files: dict[str, Path], prior_files_required: bool) -> ImageListDataset:
    """Read one list into a data set and check that its first image exists."""
    paths, labels = read_image_list(list_file)
    dataset = ImageListDataset(data_dir, np.asarray([p.encode() for p in paths]), torch.from_numpy(labels), num_classes,
                               tuple(mean), tuple(std), name, image_size, resize_size, str(list_file), prior_files,
                               prior_files_required, split_seed=split_seed)
    dataset.check_first_image()
    return dataset


def _shape_info(args: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Registered info updated with the class count and crop size a config asks for, plus a typical LT training
    profile (``cls_num_list``, max train_per_class, ratio ``imb_factor``) for shape-only builds."""
    size = int(args.get("image_size", 224))
    classes = args.get("num_classes") or info["num_classes"]
    counts = lt_class_counts(info["train_per_class"], classes, info["imb_factor"])
    return {**info, "num_classes": classes, "image_shape": (3, size, size), "cls_num_list": counts}


def _register_txt(name: str, title: str, data_dir: str, txt_dir: str, prefix: str, train_list: str, test_list: str,
                  num_classes: int | None, mean: tuple[float, ...], std: tuple[float, ...], train_per_class: int,
                  test_per_class: int, imb_factor: float, priors_required: bool) -> None:
    """Register a txt-list data set builder ``name(split, data_dir, txt_dir, ...)``."""

    def build(split: str = "train", data_dir: str = data_dir, txt_dir: str = txt_dir, train_list: str = train_list,
              val_list: str = f"{prefix}val.txt", test_list: str = test_list, prior_list_prefix: str = prefix,
              num_classes: int | None = num_classes, image_size: int = 224, resize_size: int = 256,
              mean: Sequence[float] = mean, std: Sequence[float] = std, split_seed: int = 0,
              shards: str | None = None) -> ImageListDataset:
        lists = {"train": train_list, "val": val_list, "test": test_list}
        if split not in lists:
            raise ConfigError(f"{name}: split must be one of {', '.join(lists)}, got {split!r}")
        folder = find_shipped(txt_dir, "data_txt")  # the shipped official lists from any working directory
        if num_classes is None:  # custom lists: the largest label of the train and test lists decides
            num_classes = max(int(read_image_list(folder / lists[s])[1].max()) for s in ("train", "test")) + 1
        prior_files = {}
        if split != "train":
            names = set(DATASET_PRIORS.get(name, CIFAR_TEST_PRIORS)) | {"uniform"}
            prior_files = {p: folder / f"{prior_list_prefix}{p}.txt" for p in names}
        if shards is not None and (split == "train" or has_shards(shards, split)):
            # WebDataset shards (training always; other splits when they were written), same samples as the list
            dataset = sharded_dataset(shards, split, folder / lists[split], num_classes, f"{name}/{split}", mean, std,
                                      image_size, resize_size, split_seed, prior_files, priors_required)
        else:
            dataset = _list_dataset(folder / lists[split], Path(data_dir), num_classes, f"{name}/{split}", mean, std,
                                    image_size, resize_size, split_seed, prior_files, priors_required)
        dataset.class_names = read_class_names(folder / f"{prior_list_prefix}classnames.txt", num_classes)
        return dataset

    build.__name__ = name
    build.__doc__ = f"{title}: txt lists in txt_dir, image paths relative to data_dir."
    build.info = {"num_classes": num_classes or 10, "image_shape": (3, 224, 224), "mean": mean, "std": std,  # type: ignore[attr-defined]
                  "train_per_class": train_per_class, "test_per_class": test_per_class, "imb_factor": imb_factor,
                  "loader": "image_list"}
    build.info_for = lambda args: _shape_info(args, build.info)  # type: ignore[attr-defined]
    DATASETS.register(name)(build)


_register_txt("imagenet_lt", "ImageNet-LT (1000 classes, 115,846 train images, test = ILSVRC val)", "data/imagenet",
              "data_txt/ImageNet_LT", "ImageNet_LT_", "ImageNet_LT_train.txt", "ImageNet_LT_test.txt", 1000,
              IMAGENET_MEAN, IMAGENET_STD, 1280, 50, 5 / 1280, True)
_register_txt("inat2018", "iNaturalist 2018 (8142 classes; its val list is the test list)", "data/iNaturalist",
              "data_txt/iNaturalist18", "iNaturalist18_", "iNaturalist18_train.txt", "iNaturalist18_val.txt", 8142,
              INAT_MEAN, INAT_STD, 1000, 3, 2 / 1000, True)
_register_txt("places_lt", "Places-LT (365 classes, 62,500 train images)", "data/places365", "data_txt/Places_LT_v2",
              "Places_LT_", "Places_LT_train.txt", "Places_LT_test.txt", 365, IMAGENET_MEAN, IMAGENET_STD, 4980, 100,
              5 / 4980, True)
_register_txt("txt_list", "Custom long-tailed data set from your own txt lists (num_classes inferred when omitted)",
              "data/custom", "data/custom", "test_", "train.txt", "test.txt", None, IMAGENET_MEAN, IMAGENET_STD,
              500, 50, 0.01, False)


def class_folders(folder: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``folder``."""
    if not folder.is_dir():
        raise DataNotFoundError(f"image folder not found: {folder} (expected one sub-folder per class with images)")
    return sorted(d.name for d in folder.iterdir() if d.is_dir())


def scan_image_folder(folder: Path, classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """``folder/<class>/**/<image>`` -> (paths relative to folder's parent, labels by position in ``classes``)."""
    found = class_folders(folder)
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"{folder} has class folders {unknown[:5]} that the training folder lacks")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(folder / cls)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(str((Path(dirpath) / file).relative_to(folder.parent)))
                    labels.append(label)
    if not paths:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    return paths, labels


@DATASETS.register("image_folder")
def image_folder(split: str = "train", data_dir: str = "data/custom", train_dir: str = "train", val_dir: str = "val",
                 test_dir: str = "test", prior_list_dir: str | None = None, image_size: int = 224,
                 resize_size: int = 256, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 split_seed: int = 0, shards: str | None = None) -> ImageListDataset:
    """Custom long-tailed data set from folders ``data_dir/{train,test}/<class>/*.jpg`` (classes = training folders).

    Shifted test priors come from ``prior_list_dir/test_<prior>.txt`` when present, else they are drawn from the
    test folder with the spec's procedure (ranking classes by training counts). ``shards``: a folder of WebDataset
    shards written by lt-make-shards (training split, and other splits that were written; data_loader/shards.py).
    """
    dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
    if split not in dirs:
        raise ConfigError(f"image_folder: split must be one of {', '.join(dirs)}, got {split!r}")
    root = Path(data_dir)
    prior_files = {}
    if prior_list_dir is not None and split != "train":
        folder = Path(prior_list_dir)
        prior_files = {f.stem[len("test_"):]: f for f in folder.glob("test_*.txt")}
    if shards is not None and (split == "train" or has_shards(shards, split)):  # WebDataset shards of the folders
        return sharded_dataset(shards, split, None, None, f"image_folder/{split}", mean, std, image_size, resize_size,
                               split_seed, prior_files, False)
    classes = class_folders(root / train_dir)
    paths, labels = scan_image_folder(root / dirs[split], classes)
    dataset = ImageListDataset(root, np.asarray([p.encode() for p in paths]), torch.as_tensor(labels, dtype=torch.int64),
                               len(classes), tuple(mean), tuple(std), f"image_folder/{split}", image_size, resize_size,
                               str(root / dirs[split]), prior_files, False, classes, split_seed)
    return dataset


image_folder.info = {"num_classes": 10, "image_shape": (3, 224, 224), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,  # type: ignore[attr-defined]
                     "train_per_class": 500, "test_per_class": 50, "imb_factor": 0.01, "loader": "image_list"}
image_folder.info_for = lambda args: _shape_info(args, image_folder.info)  # type: ignore[attr-defined]
