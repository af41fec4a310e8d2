"""Batch tensor augmentation for SADE's test-time views (docs/methods.md, SADE): crop, colour jitter, grayscale, blur, flip.

Like data_loader/augment.py, every op works on a whole uint8 batch with per-image random parameters drawn from the
``torch.Generator`` passed in, on whatever device the images live on. Colour ops run on floats in [0, 1].
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from longtail.data_loader.augment import _uniform, random_crop, random_flip
from longtail.registry import AUGMENTS

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL / torchvision


def _per_image(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) for broadcasting over images."""
    return values.view(-1, 1, 1, 1)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Luma of float RGB images (B, 3, H, W) -> (B, 1, H, W); single-channel images are returned unchanged."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(GRAY_WEIGHTS, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor * images + (1 - factor) * other, clipped to [0, 1] (factor per image)."""
    factor = _per_image(factor)
    return (factor * images + (1 - factor) * other).clamp(0, 1)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """Float RGB (B, 3, H, W) in [0, 1] -> HSV with every channel in [0, 1]."""
    r, g, b = rgb.unbind(1)
    maxc, minc = rgb.max(dim=1).values, rgb.min(dim=1).values
    delta = maxc - minc
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv.unbind(1)
    sector = torch.floor(h * 6.0)
    frac = h * 6.0 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    # rows: R, G, B for sectors 0..5
    table = torch.stack([torch.stack([v, q, p, p, t, v]), torch.stack([t, v, v, q, p, p]), torch.stack([p, p, t, v, v, q])])
    return table.gather(1, sector[None, None].expand(3, 1, *sector.shape)).squeeze(1).permute(1, 0, 2, 3)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of float RGB images by ``shift`` (fraction of a turn, per image); no-op for one channel."""
    if images.shape[1] == 1:
        return images
    hsv = rgb_to_hsv(images)
    hue = (hsv[:, :1] + _per_image(shift)) % 1.0
    return hsv_to_rgb(torch.cat([hue, hsv[:, 1:]], dim=1))


def color_jitter(images: torch.Tensor, gen: torch.Generator, brightness: float, contrast: float, saturation: float,
                 hue: float, p: float) -> torch.Tensor:
    """ColorJitter applied with probability p per image; the order of the four ops is drawn once per batch."""
    b, device = images.shape[0], images.device
    apply = torch.rand(b, generator=gen, device=device) < p
    factors = {
        "brightness": _uniform(b, max(0.0, 1 - brightness), 1 + brightness, gen, device),
        "contrast": _uniform(b, max(0.0, 1 - contrast), 1 + contrast, gen, device),
        "saturation": _uniform(b, max(0.0, 1 - saturation), 1 + saturation, gen, device),
        "hue": _uniform(b, -hue, hue, gen, device),
    }
    out = images
    # the order is drawn on the host (seeded from this batch's generator): reading a device draw would block
    for op in np.random.default_rng(gen.initial_seed()).permutation(4).tolist():
        if op == 0:
            out = blend(out, torch.zeros_like(out), factors["brightness"])
        elif op == 1:
            mean = to_gray(out).mean(dim=(1, 2, 3), keepdim=True)
            out = blend(out, mean.expand_as(out), factors["contrast"])
        elif op == 2 and out.shape[1] == 3:
            out = blend(out, to_gray(out).expand_as(out), factors["saturation"])
        elif op == 3 and hue > 0:
            out = adjust_hue(out, factors["hue"])
    return torch.where(_per_image(apply), out, images)


def random_grayscale(images: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """Replace each image by its luma (repeated over channels) with probability p."""
    apply = torch.rand(images.shape[0], generator=gen, device=images.device) < p
    return torch.where(_per_image(apply), to_gray(images).expand_as(images), images)


def gaussian_blur(images: torch.Tensor, gen: torch.Generator, sigma: Sequence[float], p: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding) with sigma ~ U(sigma) per image, applied with probability p."""
    b, c, h, w = images.shape
    device = images.device
    apply = torch.rand(b, generator=gen, device=device) < p
    sig = _uniform(b, sigma[0], sigma[1], gen, device)
    radius = min(int(math.ceil(3 * sigma[1])), (min(h, w) - 1) // 2)
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / sig[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, K)
    flat = images.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return torch.where(_per_image(apply), flat.view(b, c, h, w), images)


def random_resized_crop(images: torch.Tensor, gen: torch.Generator, scale: Sequence[float],
                        ratio: Sequence[float] = (3 / 4, 4 / 3), attempts: int = 10) -> torch.Tensor:
    """RandomResizedCrop back to the input size (bilinear): area ~ U(scale), log aspect ~ U(log ratio), per image.

    As torchvision: the first of ``attempts`` draws that fits inside the image is used, else the whole image.
    """
    b, _, h, w = images.shape
    device = images.device
    area = _uniform(b * attempts, scale[0], scale[1], gen, device).view(b, attempts) * (h * w)
    aspect = torch.exp(_uniform(b * attempts, math.log(ratio[0]), math.log(ratio[1]), gen, device)).view(b, attempts)
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
    first = torch.where(fits.any(dim=1), fits.float().argmax(dim=1), torch.full((b,), -1, device=device))
    pick = first.clamp_min(0)[:, None]
    cw = torch.where(first >= 0, cw.gather(1, pick).squeeze(1), torch.full((b,), float(w), device=device))
    ch = torch.where(first >= 0, ch.gather(1, pick).squeeze(1), torch.full((b,), float(h), device=device))
    x0 = torch.floor(torch.rand(b, generator=gen, device=device) * (w - cw + 1))
    y0 = torch.floor(torch.rand(b, generator=gen, device=device) * (h - ch + 1))
    # affine grid in normalised coordinates (align_corners=False): crop centre and half-size relative to the image
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 1, 1] = cw / w, ch / h
    theta[:, 0, 2], theta[:, 1, 2] = (2 * x0 + cw) / w - 1, (2 * y0 + ch) / h - 1
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ViewAugment:
    """One random view of a uint8 batch: crop -> colour jitter -> grayscale -> blur -> flip (SADE's test-time views).

    ``resized_crop_scale`` switches the crop from RandomCrop(padding) (CIFAR) to RandomResizedCrop(scale) (ImageNet).
    """

    def __init__(self, padding: int = 4, resized_crop_scale: Sequence[float] | None = None,
                 jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8, grayscale_p: float = 0.2,
                 blur_p: float = 0.2, blur_sigma: Sequence[float] = (0.1, 2.0), flip: bool = True) -> None:
        self.padding, self.resized_crop_scale = padding, resized_crop_scale
        self.jitter, self.jitter_p, self.grayscale_p = tuple(jitter), jitter_p, grayscale_p
        self.blur_p, self.blur_sigma, self.flip = blur_p, tuple(blur_sigma), flip

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.resized_crop_scale is None:
            images = random_crop(images, self.padding, gen)
        x = images.float() / 255.0
        if self.resized_crop_scale is not None:
            x = random_resized_crop(x, gen, self.resized_crop_scale)
        x = color_jitter(x, gen, *self.jitter, p=self.jitter_p)
        x = random_grayscale(x, gen, self.grayscale_p)
        x = gaussian_blur(x, gen, self.blur_sigma, self.blur_p)
        images = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
        return random_flip(images, gen) if self.flip else images

    def __repr__(self) -> str:
        crop = f"resized_crop_scale={self.resized_crop_scale}" if self.resized_crop_scale else f"padding={self.padding}"
        return (f"ViewAugment({crop}, jitter={self.jitter}, jitter_p={self.jitter_p}, grayscale_p={self.grayscale_p}, "
                f"blur_p={self.blur_p}, blur_sigma={self.blur_sigma}, flip={self.flip})")


@AUGMENTS.register("sade_view")
def sade_view(padding: int = 4, resized_crop_scale: list[float] | None = None,
              jitter: list[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8,  # type: ignore[assignment]
              grayscale_p: float = 0.2, blur_p: float = 0.2, blur_sigma: list[float] = (0.1, 2.0),  # type: ignore[assignment]
              flip: bool = True) -> ViewAugment:
    """SADE's test-time view augmentation (CIFAR defaults; ImageNet: resized_crop_scale [0.2, 1], blur_p 0.5)."""
    return ViewAugment(padding, resized_crop_scale, jitter, jitter_p, grayscale_p, blur_p, blur_sigma, flip)
