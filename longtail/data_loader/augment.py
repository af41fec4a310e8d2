"""Batch-level augmentation of uint8 image tensors with tensor ops (no per-image PIL calls).

Every random draw comes from the ``torch.Generator`` passed in, so a batch's augmentation is a pure function of
(seed, epoch, step) and runs on whatever device the images live on.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from longtail.registry import AUGMENTS



def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """n uniform draws in [low, high) from ``gen``."""
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def random_crop(images: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the original size from the zero-padded batch (RandomCrop(size, padding))."""
    if padding <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    off_y = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=images.device)
    off_x = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=images.device)
    rows = off_y[:, None] + torch.arange(h, device=images.device)
    cols = off_x[:, None] + torch.arange(w, device=images.device)
    batch = torch.arange(b, device=images.device)[:, None, None]
    # advanced indices on dims 0, 2, 3 around a slice put the channel dim last: (B, H, W, C)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image horizontally with probability p."""
    flip = torch.rand(images.shape[0], generator=gen, device=images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_rotation(images: torch.Tensor, degrees: float, gen: torch.Generator) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees] (nearest neighbour, zero fill)."""
    if degrees <= 0:
        return images
    b = images.shape[0]
    angle = _uniform(b, -degrees, degrees, gen, images.device) * (math.pi / 180.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    rotated = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return rotated.round().to(images.dtype)


def cutout(images: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image at a uniform random centre (clipped at the border)."""
    if size <= 0:
        return images
    b, _, h, w = images.shape
    cy = torch.randint(0, h, (b,), generator=gen, device=images.device)
    cx = torch.randint(0, w, (b,), generator=gen, device=images.device)
    ys = torch.arange(h, device=images.device)[None, :, None]
    xs = torch.arange(w, device=images.device)[None, None, :]
    half = size // 2
    top, left = cy[:, None, None] - half, cx[:, None, None] - half
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return images.masked_fill(inside[:, None], 0)


# The 25 published CIFAR-10 AutoAugment sub-policies (Cubuk et al. 2019): (op, probability, magnitude bin 0..9).
CIFAR10_POLICY: list[tuple[tuple[str, float, int | None], tuple[str, float, int | None]]] = [
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
]
_SIGNED_OPS = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}


def _op_magnitude(op: str, bin_index: int | None, height: int, width: int, num_bins: int = 10) -> float:
    """Magnitude of an AutoAugment op for a bin index (linear ranges of the published policy)."""
    if bin_index is None:
        return 0.0
    frac = bin_index / (num_bins - 1)
    ranges = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150.0 / 331.0 * width, "TranslateY": 150.0 / 331.0 * height,
              "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}
    if op in ranges:
        return ranges[op] * frac
    if op == "Posterize":
        return float(round(8 - bin_index / ((num_bins - 1) / 4)))
    if op == "Solarize":
        return 1.0 - frac
    raise ValueError(f"op {op} takes no magnitude")


def apply_op(images: torch.Tensor, op: str, magnitude: float, fill: Sequence[float]) -> torch.Tensor:
    """Apply one AutoAugment operation to a whole uint8 batch (same magnitude for every image)."""
    nearest = InterpolationMode.NEAREST
    fill = list(fill)
    if op == "ShearX":
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=[math.degrees(math.atan(magnitude)), 0.0],
                         interpolation=nearest, fill=fill, center=[0, 0])
    if op == "ShearY":
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, math.degrees(math.atan(magnitude))],
                         interpolation=nearest, fill=fill, center=[0, 0])
    if op == "TranslateX":
        return TF.affine(images, angle=0.0, translate=[int(magnitude), 0], scale=1.0, shear=[0.0, 0.0],
                         interpolation=nearest, fill=fill)
    if op == "TranslateY":
        return TF.affine(images, angle=0.0, translate=[0, int(magnitude)], scale=1.0, shear=[0.0, 0.0],
                         interpolation=nearest, fill=fill)
    if op == "Rotate":
        return TF.rotate(images, angle=magnitude, interpolation=nearest, fill=fill)
    if op == "Brightness":
        return TF.adjust_brightness(images, 1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(images, 1.0 + magnitude) if images.shape[1] == 3 else images
    if op == "Contrast":
        return TF.adjust_contrast(images, 1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(images, 1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(images, int(magnitude))
    if op == "Solarize":
        return TF.solarize(images, 255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF.equalize(images)
    if op == "Invert":
        return TF.invert(images)
    raise ValueError(f"unknown AutoAugment op {op!r}")


_GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_DEVICE_CONSTANTS: dict[tuple, torch.Tensor] = {}  # made once per (kind, shape, device): never a per-step copy


def _device_constant(key: tuple, make: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
    """A small constant tensor on ``device``, copied there once and cached (per-op host tensors would block)."""
    full_key = (*key, str(device))
    if full_key not in _DEVICE_CONSTANTS:
        _DEVICE_CONSTANTS[full_key] = make().to(device)
    return _DEVICE_CONSTANTS[full_key]


def _inverse_affine(op: str, magnitude: float, height: int, width: int) -> list[float]:
    """The 2x3 output-to-input matrix (pixel units, origin at the image centre) of a geometric AutoAugment op, as
    torchvision's affine/rotate build it for the same arguments (apply_op is the reference)."""
    angle, shear_x, shear_y, tx, ty, cx, cy = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    if op in ("ShearX", "ShearY"):  # sheared about the top-left corner (center=[0, 0] in pixel coordinates)
        cx, cy = -0.5 * width, -0.5 * height
        shear = math.atan(magnitude)  # torchvision takes degrees(atan(m)) and converts back to radians
        shear_x, shear_y = (math.radians(math.degrees(shear)), 0.0) if op == "ShearX" else (0.0, math.radians(math.degrees(shear)))
    elif op == "TranslateX":
        tx = float(int(magnitude))
    elif op == "TranslateY":
        ty = float(int(magnitude))
    else:  # Rotate: torchvision's rotate inverts the angle of its affine convention
        angle = math.radians(-magnitude)
    a = math.cos(angle - shear_y) / math.cos(shear_y)
    b = -math.cos(angle - shear_y) * math.tan(shear_x) / math.cos(shear_y) - math.sin(angle)
    c = math.sin(angle - shear_y) / math.cos(shear_y)
    d = -math.sin(angle - shear_y) * math.tan(shear_x) / math.cos(shear_y) + math.cos(angle)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _affine_nearest(images: torch.Tensor, theta: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour affine warp of a uint8 batch by one (1, 2, 3) device matrix, out-of-image pixels set to
    ``fill``: torchvision's affine computation, with its constants cached on the device."""
    g, c, h, w = images.shape
    device = images.device

    def base_grid() -> torch.Tensor:
        grid = torch.empty(1, h, w, 3)
        grid[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w))
        grid[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h).unsqueeze_(-1))
        grid[..., 2].fill_(1)
        return grid.view(1, h * w, 3)

    base = _device_constant(("affine_grid", h, w), base_grid, device)
    half = _device_constant(("affine_half", h, w), lambda: torch.tensor([0.5 * w, 0.5 * h]), device)
    grid = base.bmm(theta.transpose(1, 2) / half).view(1, h, w, 2).expand(g, -1, -1, -1)
    sampled = F.grid_sample(torch.cat([images.float(), images.new_ones((g, 1, h, w), dtype=torch.float32)], 1), grid,
                            mode="nearest", padding_mode="zeros", align_corners=False)
    warped, mask = sampled[:, :c], sampled[:, c:].expand(g, c, h, w)
    warped = torch.where(mask < 0.5, fill.view(1, c, 1, 1).expand_as(warped), warped)
    return warped.round_().to(images.dtype)


def _sharpness(images: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's adjust_sharpness on a uint8 batch, with its 3x3 smoothing kernel cached on the device."""
    c = images.shape[1]
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = _device_constant(("sharpness",), lambda: torch.tensor([[a, a, a], [a, b, a], [a, a, a]]), images.device)
    output = images.to(dtype=torch.float32, copy=True)
    blurred = F.conv2d(output, kernel.expand(c, 1, 3, 3), groups=c).round_()
    view = output[..., 1:-1, 1:-1]
    view.add_(blurred.sub_(view), alpha=1.0 - factor)
    return output.clamp_(0, 255).to(images.dtype)


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One host-to-device copy that does not block the host (pinned memory, non_blocking) on GPUs."""
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


def auto_augment(images: torch.Tensor, gen: torch.Generator, fill: Sequence[float] = (128, 128, 128),
                 policy: Sequence = tuple(CIFAR10_POLICY)) -> torch.Tensor:
    """AutoAugment with one sub-policy per image; images sharing (op, magnitude, sign) are transformed together.

    The per-image choices are drawn on the host (NumPy, seeded from ``gen``) so that grouping needs no device read;
    each of the two slots then makes one non-blocking copy of its group indices and affine matrices to the device,
    and every op runs on device tensors (no per-op host tensors, no synchronisation).
    """
    b, c, h, w = images.shape
    device = images.device
    rng = np.random.default_rng(gen.initial_seed())
    choice = rng.integers(0, len(policy), size=b).tolist()
    fire = rng.random((b, 2)).tolist()
    sign = np.where(rng.random((b, 2)) < 0.5, -1.0, 1.0).tolist()
    fill = list(fill)[:c] if len(fill) >= c else [fill[0]] * c
    fill_device = _device_constant(("fill", *map(float, fill)), lambda: torch.tensor(fill, dtype=torch.float32), device)
    out = images.clone()
    for slot in range(2):
        groups: dict[tuple[str, float], list[int]] = {}
        for i in range(b):
            op, prob, bin_index = policy[choice[i]][slot]
            if fire[i][slot] >= prob:
                continue
            magnitude = _op_magnitude(op, bin_index, h, w) if bin_index is not None else 0.0
            if op in _SIGNED_OPS:
                magnitude *= sign[i][slot]
            groups.setdefault((op, magnitude), []).append(i)
        if not groups:
            continue
        flat = _to_device(torch.tensor([i for members in groups.values() for i in members]), device)
        matrices = [_inverse_affine(op, m, h, w) for op, m in groups if op in _GEOMETRIC_OPS]
        thetas = _to_device(torch.tensor(matrices, dtype=torch.float32).view(-1, 1, 2, 3), device) if matrices else None
        start, geometric = 0, 0
        for (op, magnitude), members in groups.items():
            idx = flat[start:start + len(members)]
            start += len(members)
            if op in _GEOMETRIC_OPS:
                out[idx] = _affine_nearest(out[idx], thetas[geometric], fill_device)
                geometric += 1
            elif op == "Sharpness":
                out[idx] = _sharpness(out[idx], 1.0 + magnitude)
            else:
                out[idx] = apply_op(out[idx], op, magnitude, fill)
    return out


class BatchAugment:
    """Composable training augmentation applied to a whole uint8 batch: crop -> flip -> rotation/AutoAugment -> cutout."""

    def __init__(self, padding: int = 4, flip: bool = True, rotation: float = 0.0, autoaugment: bool = False,
                 cutout: int = 0, fill: Sequence[float] = (128, 128, 128)) -> None:
        self.padding, self.flip, self.rotation = padding, flip, rotation
        self.autoaugment, self.cutout, self.fill = autoaugment, cutout, tuple(fill)

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        images = random_crop(images, self.padding, gen)
        if self.flip:
            images = random_flip(images, gen)
        images = random_rotation(images, self.rotation, gen)
        if self.autoaugment:
            images = auto_augment(images, gen, self.fill)
        return cutout(images, self.cutout, gen)

    def __repr__(self) -> str:
        return (f"BatchAugment(padding={self.padding}, flip={self.flip}, rotation={self.rotation}, "
                f"autoaugment={self.autoaugment}, cutout={self.cutout})")


def resized_crop_boxes(b: int, h: int, w: int, scale: Sequence[float], ratio: Sequence[float], gen: torch.Generator,
                       device: torch.device) -> torch.Tensor:
    """(B, 4) boxes (top, left, height, width) of RandomResizedCrop: area ~ U(scale) * h * w, log aspect ~ U(log
    ratio), the first of 10 draws that fits, else the centre crop with the ratio clamped (torchvision's rule)."""
    area = h * w * _uniform(b * 10, scale[0], scale[1], gen, device).view(b, 10)
    aspect = torch.exp(_uniform(b * 10, math.log(ratio[0]), math.log(ratio[1]), gen, device)).view(b, 10)
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros(b, dtype=torch.long, device=device))
    cw, ch = cw.gather(1, first[:, None])[:, 0], ch.gather(1, first[:, None])[:, 0]
    in_ratio = w / h  # fallback: the whole image at the clamped aspect ratio
    fw = float(w if min(ratio) <= in_ratio <= max(ratio) else (round(h * min(ratio)) if in_ratio < min(ratio) else w))
    fh = float(h if min(ratio) <= in_ratio <= max(ratio) else (h if in_ratio < min(ratio) else round(w / max(ratio))))
    ok = fits.any(1)
    cw, ch = torch.where(ok, cw, torch.full_like(cw, fw)), torch.where(ok, ch, torch.full_like(ch, fh))
    top = torch.floor(torch.rand(b, generator=gen, device=device) * (h - ch + 1))
    left = torch.floor(torch.rand(b, generator=gen, device=device) * (w - cw + 1))
    top = torch.where(ok, top, torch.floor((h - ch) / 2))
    left = torch.where(ok, left, torch.floor((w - cw) / 2))
    return torch.stack([top, left, ch, cw], 1).long()


class ResizedCropAugment:
    """RandomResizedCrop(size) + horizontal flip on a uint8 batch, straight from the stored images (e.g. 32-pixel
    CIFAR) to the model's input size in one bilinear resampling (torchvision.ops.roi_align with aligned boxes: the
    sample points of F.interpolate(align_corners=False), averaged over ceil(box / size) points per output pixel when
    shrinking); one batched op on the device, no host read. Returns float images on the 0..255 scale."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float], flip: bool) -> None:
        self.size, self.scale, self.ratio, self.flip = size, tuple(scale), tuple(ratio), flip

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        from torchvision.ops import roi_align

        b, _, h, w = images.shape
        top, left, ch, cw = resized_crop_boxes(b, h, w, self.scale, self.ratio, gen, images.device).float().unbind(1)
        index = torch.arange(b, device=images.device, dtype=torch.float32)
        rois = torch.stack([index, left, top, left + cw, top + ch], 1)
        out = roi_align(images.float(), rois, (self.size, self.size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        return random_flip(out, gen) if self.flip else out

    def __repr__(self) -> str:
        return f"ResizedCropAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, flip={self.flip})"


@AUGMENTS.register("resized_crop")
def resized_crop_augment(size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                         ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True) -> ResizedCropAugment:
    """RandomResizedCrop to the model's input size + flip for in-memory images (LIFT's CIFAR recipe: a 32-pixel image
    cropped and resized to 224, bilinear); ``size`` comes from data_loader.args.input when it is set."""
    return ResizedCropAugment(size, scale, ratio, flip)


@AUGMENTS.register("none")
def no_augment() -> None:
    """No training augmentation (evaluation-style inputs)."""
    return None


@AUGMENTS.register("standard")
def standard_augment(padding: int = 4, flip: bool = True, rotation: float = 0.0) -> BatchAugment:
    """Random crop with zero padding + horizontal flip (+ optional random rotation, as in the reference CIFAR code)."""
    return BatchAugment(padding=padding, flip=flip, rotation=rotation)


@AUGMENTS.register("autoaugment")
def autoaugment_cifar(padding: int = 4, flip: bool = True, cutout: int = 0) -> BatchAugment:
    """Crop + flip + AutoAugment (CIFAR-10 policy, fill 128) for the long-training configs."""
    return BatchAugment(padding=padding, flip=flip, autoaugment=True, cutout=cutout)


@functools.lru_cache(maxsize=32)
def _normalization_constants(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean*255 and 1/(std*255) on ``device``, built once (no host-to-device copy per batch)."""
    c = len(mean)
    mean_t = torch.tensor([m * 255.0 for m in mean], device=device).view(1, c, 1, 1)
    inv_std = torch.tensor([1.0 / (s * 255.0) for s in std], device=device).view(1, c, 1, 1)
    return mean_t, inv_std


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 normalised with per-channel mean/std given on the [0, 1] scale."""
    mean_t, inv_std = _normalization_constants(tuple(mean), tuple(std), images.device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = images.to(dtype=torch.float32, memory_format=memory_format)
    return out.sub_(mean_t).mul_(inv_std)
