"""JPEG decoding on the training device for image-list data (``data_loader.args.decode: "device"``).

The loader workers only read the file bytes and draw the sample's augmentation parameters; the main process decodes
the whole batch with ``torchvision.io.decode_jpeg(..., device=...)`` (nvJPEG on GPUs) and crops, resizes, flips and
colour-jitters each image there. The parameters are drawn with the same calls, in the same order and under the
same per-sample seed as the PIL transform they replace, so both paths take the same crop, flip and jitter factors
for a sample; the pixels differ only by the resampling and rounding of the tensor kernels. Supported: the
``imagenet`` recipe (random resized crop, flip, colour jitter without hue), the test transform (resize +
centre crop) and ``multi_view`` transforms made of these (each view has its own plan; the JPEG is decoded once).
RandAugment and SADE's views stay on the PIL path. Files that are not JPEG (a few PNGs or CMYK
JPEGs in some data sets) are decoded by PIL in the worker and only copied to the device.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from longtail.data_loader.multiview import MultiViewTransform
from longtail.utils.errors import ConfigError

# torchvision 0.29 deprecates torchvision.io's codecs in favour of TorchCodec; they are what this path is built on
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
JPEG_MAGIC = b"\xff\xd8\xff"
DECODE_MODES = ("pil", "device")


@dataclass(frozen=True)
class DevicePlan:
    """The device half of a PIL transform: what is drawn per sample (``draw``) and how it is applied (``apply``)."""

    size: int
    scale: tuple[float, float] | None = None  # random resized crop; None: the test transform
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float | None = None                 # horizontal flip probability (None: no flip step)
    jitter: tuple[Any, Any, Any] | None = None  # ColorJitter's (brightness, contrast, saturation) ranges
    resize: int = 256                          # test transform: short side before the centre crop
    interpolation: str = "bilinear"            # resampling of the resize / resized crop

    def draw(self, width: int, height: int) -> list[float]:
        """The sample's parameters from torch's global generator, with the PIL transform's own calls in its order:
        [top, left, height, width, flip, jitter op order (4), brightness, contrast, saturation]."""
        if self.scale is None:
            return []
        shape_only = torch.empty((0, height, width))  # get_params reads the size only
        top, left, h, w = T.RandomResizedCrop.get_params(shape_only, list(self.scale), list(self.ratio))
        flip = float(self.flip is not None and bool(torch.rand(1) < self.flip))
        params = [top, left, h, w, flip]
        if self.jitter is not None:
            order, b, c, s, _ = T.ColorJitter.get_params(*self.jitter, None)
            params += [float(i) for i in order.tolist()] + [_or(b), _or(c), _or(s)]
        return [float(p) for p in params]

    def apply(self, image: torch.Tensor, params: Sequence[float]) -> torch.Tensor:
        """Transform one decoded uint8 CHW image on its device."""
        mode = T.InterpolationMode(self.interpolation)
        if self.scale is None:
            image = TF.resize(image, [self.resize], interpolation=mode, antialias=True)
            return TF.center_crop(image, [self.size, self.size])
        top, left, h, w = (int(v) for v in params[:4])
        image = TF.resize(image[:, top:top + h, left:left + w], [self.size, self.size], interpolation=mode,
                          antialias=True)
        if params[4]:
            image = image.flip(-1)
        if self.jitter is not None:
            factors = params[9:12]
            adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
            for op in (int(v) for v in params[5:9]):
                if op < 3 and factors[op] >= 0:
                    image = adjust[op](image, factors[op])
        return image


@dataclass(frozen=True)
class MultiViewPlan:
    """Device plans of a ``multi_view`` transform: the image is decoded once and every view is made from it."""

    plans: tuple[DevicePlan, ...]

    def draw(self, width: int, height: int) -> list[list[float]]:
        """Each view's parameters, drawn one after the other as the PIL multi-view transform draws them."""
        return [plan.draw(width, height) for plan in self.plans]

    def apply(self, image: torch.Tensor, params: Sequence[Sequence[float]]) -> torch.Tensor:
        """The k views (k, C, H, W) of one decoded image."""
        return torch.stack([plan.apply(image, p) for plan, p in zip(self.plans, params)])


def _or(factor: float | None) -> float:
    """A jitter factor, or -1 for an op that is off (ColorJitter skips it)."""
    return -1.0 if factor is None else float(factor)


def device_plan(transform: Any, resize_size: int, image_size: int, interpolation: str = "bilinear"
                ) -> DevicePlan | MultiViewPlan:
    """The device plan equivalent to a training transform built by IMAGE_AUGMENTS (or the test transform when
    ``transform`` is None; one plan per view of a multi-view transform); anything else cannot be decoded on the
    device and is named."""
    if transform is None:
        return DevicePlan(size=image_size, resize=resize_size, interpolation=interpolation)
    if isinstance(transform, MultiViewTransform):
        return MultiViewPlan(tuple(device_plan(view, resize_size, image_size, interpolation) for view in transform.views))
    steps = list(getattr(transform, "transforms", [transform]))
    crop = steps.pop(0) if steps and isinstance(steps[0], T.RandomResizedCrop) else None
    flip = steps.pop(0) if steps and isinstance(steps[0], T.RandomHorizontalFlip) else None
    jitter = steps.pop(0) if steps and isinstance(steps[0], T.ColorJitter) else None
    if crop is None or steps or (jitter is not None and jitter.hue is not None):
        raise ConfigError("data_loader.args.decode 'device' supports the 'imagenet' augmentation (random resized crop, "
                          f"flip, colour jitter) and the test transform, not {transform!r}; use decode 'pil'")
    size = crop.size[0] if isinstance(crop.size, (list, tuple)) else int(crop.size)
    return DevicePlan(size=size, scale=tuple(crop.scale), ratio=tuple(crop.ratio), flip=flip.p if flip else None,
                      jitter=(jitter.brightness, jitter.contrast, jitter.saturation) if jitter else None,
                      resize=resize_size, interpolation=crop.interpolation.value)


def read_encoded(data: bytes) -> tuple[torch.Tensor, bool, tuple[int, int]]:
    """An image file's bytes -> (uint8 bytes of a JPEG, True, (width, height)), or (decoded uint8 CHW RGB, False,
    size) for other formats."""
    with Image.open(io.BytesIO(data)) as image:
        size = image.size
        if data[:3] == JPEG_MAGIC and image.mode in ("RGB", "L"):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), True, size
        rgb = torch.from_numpy(np.asarray(image.convert("RGB")).copy()).permute(2, 0, 1)
    return rgb.contiguous(), False, size


def keep_list(batch: list) -> list:
    """DataLoader collate function that leaves a batch of variable-size samples as a list."""
    return batch


def decode_batch(items: Sequence[tuple[torch.Tensor, bool]], plan: DevicePlan | MultiViewPlan, params: Sequence[Any],
                 device: torch.device) -> torch.Tensor:
    """Decode a batch's JPEGs on ``device`` in one call, transform every image there and stack them (uint8 NCHW)."""
    jpegs = [data for data, encoded in items if encoded]
    decoded = iter(decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device) if jpegs else [])
    images = [next(decoded) if encoded else data.to(device, non_blocking=True) for data, encoded in items]
    return torch.stack([plan.apply(image, p) for image, p in zip(images, params)])
