"""WebDataset tar shards of an image-list data set (ImageNet-LT, iNaturalist 2018, Places-LT, custom lists).

``lt-make-shards`` writes a split's images into ``<out>/<split>-NNNNNN.tar`` with webdataset's ShardWriter: one sample
per list line, in list order, key = the line number, the image file's bytes unchanged (``.jpg`` / ``.png`` ...),
``.cls`` = the label and ``.path`` = the path written in the list. Any WebDataset pipeline can stream them. Next to
them ``<split>-index.npz`` records each sample's shard, byte offset and size (read from the tar headers), label and
list path, plus ``<split>-index.json`` (the list it came from, its SHA-256, counts).

Training reads a sample by its offset (one ``pread`` in a shard file held open by each worker): the epoch order, the
samplers (random, class-balanced, ...), the per-sample augmentation seeds and the class counts are exactly those of
the folder layout, batch for batch, while the file system sees a few large files instead of one file per image.
Splits without shards (e.g. the test split) keep reading the folder + lists, and the shifted test lists map onto a
sharded split by path as before.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from longtail.data_loader.image_lists import ImageListDataset
from longtail.utils.errors import DataError, DataNotFoundError

INDEX_FORMAT = "longtail-shards/1"
MAKE_SHARDS = "lt-make-shards -c CONFIG --out DIR"


def index_paths(folder: Path, split: str) -> tuple[Path, Path]:
    """(arrays, description) of a split's shard index."""
    return folder / f"{split}-index.npz", folder / f"{split}-index.json"


def list_digest(path: str | Path) -> str:
    """SHA-256 of a list file (what the shards were written from)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sample_key(index: int) -> str:
    """The WebDataset key of sample ``index`` (its line in the list)."""
    return f"{index:09d}"


def write_shards(dataset: ImageListDataset, out: str | Path, split: str, shard_size: int = 1000,
                 max_shard_bytes: float = 3e9, source_list: str | Path | None = None) -> dict[str, Any]:
    """Write ``dataset`` (a split read from its folder + list) as WebDataset shards plus their index; returns the
    description written to ``<split>-index.json``."""
    import webdataset as wds

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{split}-[0-9]*.tar"):
        stale.unlink()
    with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=shard_size, maxsize=max_shard_bytes,
                         verbose=0) as writer:
        for index in range(len(dataset)):
            path = dataset.relative_path(index)
            extension = Path(path).suffix.lower().lstrip(".") or "jpg"
            writer.write({"__key__": sample_key(index), extension: dataset.read_bytes(index),
                          "cls": str(int(dataset.targets[index])).encode(), "path": path.encode()})
    shards = sorted(p.name for p in out.glob(f"{split}-[0-9]*.tar"))
    arrays = scan_shards(out, shards, len(dataset))
    if not np.array_equal(arrays["label"], dataset.targets.numpy()):
        raise DataError(f"{out}: the labels read back from the shards differ from {dataset.source}")
    arrays_path, description_path = index_paths(out, split)
    np.savez(arrays_path, **arrays)
    description = {"format": INDEX_FORMAT, "split": split, "samples": len(dataset), "classes": dataset.num_classes,
                   "shards": shards, "source": str(source_list or dataset.source),
                   "source_sha256": list_digest(source_list or dataset.source) if Path(source_list or dataset.source).is_file() else None}
    description_path.write_text(json.dumps(description, indent=2) + "\n")
    return description


def scan_shards(folder: Path, shards: Sequence[str], count: int) -> dict[str, np.ndarray]:
    """Per sample: shard number, byte offset and size of its image, label and list path (from the tar headers)."""
    shard = np.full(count, -1, dtype=np.int32)
    offset = np.zeros(count, dtype=np.int64)
    size = np.zeros(count, dtype=np.int64)
    label = np.zeros(count, dtype=np.int64)
    paths: list[bytes] = [b""] * count
    for number, name in enumerate(shards):
        with tarfile.open(folder / name) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                index = int(key)
                if extension == "cls":
                    label[index] = int(tar.extractfile(member).read())
                elif extension == "path":
                    paths[index] = tar.extractfile(member).read()
                else:
                    shard[index], offset[index], size[index] = number, member.offset_data, member.size
    if (shard < 0).any():
        raise DataError(f"{folder}: {int((shard < 0).sum())} samples have no image in the shards")
    return {"shard": shard, "offset": offset, "size": size, "label": label, "path": np.asarray(paths)}


@dataclass
class ShardedImageDataset(ImageListDataset):
    """A split read from WebDataset shards: the same samples, labels, paths and per-sample transforms as the folder
    layout (root = the shard folder); images are read by byte offset."""

    shard_files: list[Path] = field(default_factory=list)
    shard_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _files: dict[tuple[int, int], int] = field(default_factory=dict, init=False, repr=False)

    def _descriptor(self, shard: int) -> int:
        """An open file descriptor of shard ``shard`` in this process (workers open their own)."""
        key = (os.getpid(), shard)
        if key not in self._files:
            path = self.shard_files[shard]
            try:
                self._files[key] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise DataNotFoundError(f"shard not found: {path} (data_loader.args.shards = {self.root}); write the "
                                        f"shards again with {MAKE_SHARDS}") from None
        return self._files[key]

    def read_bytes(self, index: int) -> bytes:
        """The image file's bytes of sample ``index``, from its shard."""
        shard, offset, size = int(self.shard_of[index]), int(self.offsets[index]), int(self.sizes[index])
        data = os.pread(self._descriptor(shard), size, offset)
        if len(data) != size:
            raise DataError(f"{self.shard_files[shard]} is shorter than its index says (sample {index}, "
                            f"{self.relative_path(index)}); write the shards again with {MAKE_SHARDS}")
        return data

    def load_image(self, index: int) -> Image.Image:
        """Decode sample ``index`` as an RGB PIL image."""
        try:
            with Image.open(io.BytesIO(self.read_bytes(index))) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot decode sample {index} ({self.relative_path(index)}) of "
                            f"{self.shard_files[int(self.shard_of[index])]}: {exc}") from None

    def check_first_image(self) -> None:
        """Fail at build time when a shard is missing."""
        for shard in range(len(self.shard_files)):
            self._descriptor(shard)

    def __getstate__(self) -> dict[str, Any]:
        """Open files stay with their process."""
        return {**self.__dict__, "_files": {}}


def has_shards(folder: str | Path | None, split: str) -> bool:
    """Whether ``folder`` holds shards of ``split``."""
    return folder is not None and all(p.is_file() for p in index_paths(Path(folder), split))


def sharded_dataset(folder: str | Path, split: str, list_file: Path | None, num_classes: int | None, name: str,
                    mean: Sequence[float], std: Sequence[float], image_size: int, resize_size: int, split_seed: int,
                    prior_files: dict[str, Path], prior_files_required: bool,
                    class_names: list[str] | None = None) -> ShardedImageDataset:
    """A split from ``folder``'s shards; when the list it was written from is readable, it must be unchanged."""
    folder = Path(folder)
    arrays_path, description_path = index_paths(folder, split)
    if not (arrays_path.is_file() and description_path.is_file()):
        raise DataNotFoundError(f"no shards of the {split} split in {folder} (data_loader.args.shards): expected "
                                f"{description_path.name} and {arrays_path.name}; write them with {MAKE_SHARDS} "
                                f"--splits {split}")
    description = json.loads(description_path.read_text())
    if description.get("format") != INDEX_FORMAT:
        raise DataError(f"{description_path}: not a shard index of this framework (format {description.get('format')!r})")
    if list_file is not None and list_file.is_file() and description.get("source_sha256") and \
            list_digest(list_file) != description["source_sha256"]:
        raise DataError(f"the {split} shards in {folder} were written from another list than {list_file} "
                        f"({description['source']}); write them again with {MAKE_SHARDS}")
    arrays = np.load(arrays_path)
    classes = num_classes or int(description["classes"])
    dataset = ShardedImageDataset(folder, arrays["path"], torch.from_numpy(arrays["label"]), classes, tuple(mean),
                                  tuple(std), name, image_size, resize_size, str(description_path), prior_files,
                                  prior_files_required, list(class_names or []), split_seed,
                                  shard_files=[folder / s for s in description["shards"]], shard_of=arrays["shard"],
                                  offsets=arrays["offset"], sizes=arrays["size"])
    dataset.check_first_image()
    return dataset
