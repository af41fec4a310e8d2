"""Per-image (PIL) transforms for image-file data sets (docs/methods.md, data augmentation).

Every random draw uses torch's global generator, which the image-list loader seeds per sample from
(seed, epoch, position in the epoch order); a sample's augmentation is therefore reproducible and independent of the
number of workers or processes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torchvision.transforms as T
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from longtail.registry import IMAGE_AUGMENTS


ImageTransform = Callable[[Image.Image], Image.Image]


def interpolation_mode(name: str) -> T.InterpolationMode:
    """torchvision's resampling mode of a name (nearest, bilinear, bicubic)."""
    return T.InterpolationMode(name)


def eval_transform(resize_size: int, image_size: int, interpolation: str = "bilinear") -> ImageTransform:
    """Resize the short side to ``resize_size`` and take the central ``image_size`` crop (test transform)."""
    return T.Compose([T.Resize(resize_size, interpolation=interpolation_mode(interpolation)), T.CenterCrop(image_size)])


def _coin(p: float = 0.5) -> bool:
    """True with probability p (torch's global generator)."""
    return bool(torch.rand(()) < p)


def _signed(value: float) -> float:
    """``value`` with a random sign."""
    return -value if _coin() else value


def _affine(image: Image.Image, matrix: tuple[float, ...], fill: tuple[int, ...]) -> Image.Image:
    """PIL affine warp with a random bilinear/bicubic filter (timm's RandAugment default)."""
    resample = Image.Resampling.BILINEAR if _coin() else Image.Resampling.BICUBIC
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def solarize_add(image: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    """Add ``add`` (clipped at 255) to every pixel value below ``threshold``."""
    lut = [min(255, v + add) if v < threshold else v for v in range(256)]
    return image.point(lut * len(image.getbands()))


def rand_augment_op(image: Image.Image, op: str, level: float, fill: tuple[int, ...]) -> Image.Image:
    """One RandAugment operation at ``level`` in [0, 1] (= magnitude / 10) with timm's level-to-argument maps."""
    if op == "AutoContrast":
        return ImageOps.autocontrast(image)
    if op == "Equalize":
        return ImageOps.equalize(image)
    if op == "Invert":
        return ImageOps.invert(image)
    if op == "Rotate":
        resample = Image.Resampling.BILINEAR if _coin() else Image.Resampling.BICUBIC
        return image.rotate(_signed(30.0 * level), resample=resample, fillcolor=fill)
    if op == "Posterize":  # keep int(4 * level) most significant bits (severity decreases with level)
        return ImageOps.posterize(image, int(4 * level))
    if op == "Solarize":  # threshold grows with level (severity decreases)
        return ImageOps.solarize(image, min(256, int(256 * level)))
    if op == "SolarizeAdd":
        return solarize_add(image, min(128, int(110 * level)))
    if op in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, op)(image).enhance(1.8 * level + 0.1)
    if op == "ShearX":
        return _affine(image, (1, _signed(0.3 * level), 0, 0, 1, 0), fill)
    if op == "ShearY":
        return _affine(image, (1, 0, 0, _signed(0.3 * level), 1, 0), fill)
    if op == "TranslateXRel":
        return _affine(image, (1, 0, _signed(0.45 * level) * image.size[0], 0, 1, 0), fill)
    if op == "TranslateYRel":
        return _affine(image, (1, 0, 0, 0, 1, _signed(0.45 * level) * image.size[1]), fill)
    raise ValueError(f"unknown RandAugment op {op!r}")


class RandAugment:
    """timm's 'rand-n{n}-m{m}-mstd{std}' policy: n ops drawn with replacement from 15, each applied with probability p,
    magnitude ~ N(m, std) clipped to [0, 10], fill colour = the data set mean in 0..255 (docs/methods.md)."""

    OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
           "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

    def __init__(self, num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.5, prob: float = 0.5,
                 fill: Sequence[int] = (124, 116, 104)) -> None:
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = num_ops, magnitude, magnitude_std, prob
        self.fill = tuple(int(v) for v in fill)

    def __call__(self, image: Image.Image) -> Image.Image:
        ops = torch.randint(0, len(self.OPS), (self.num_ops,)).tolist()
        for op in ops:
            if not _coin(self.prob):
                continue
            magnitude = self.magnitude + self.magnitude_std * float(torch.randn(())) if self.magnitude_std > 0 else self.magnitude
            image = rand_augment_op(image, self.OPS[op], min(max(magnitude, 0.0), 10.0) / 10.0, self.fill)
        return image

    def __repr__(self) -> str:
        return f"RandAugment(n={self.num_ops}, m={self.magnitude}, mstd={self.magnitude_std}, p={self.prob})"


def _crop_flip_jitter(size: int, scale: Sequence[float], flip: bool, color_jitter: float,
                      interpolation: str = "bilinear") -> list[ImageTransform]:
    """RandomResizedCrop (ratio 3/4-4/3) -> optional horizontal flip -> optional ColorJitter(b, c, s, hue 0)."""
    steps: list[ImageTransform] = [T.RandomResizedCrop(size, scale=tuple(scale),
                                                       interpolation=interpolation_mode(interpolation))]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(T.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0))
    return steps


@IMAGE_AUGMENTS.register("none")
def no_image_augment() -> None:
    """No training augmentation: the test transform (resize + centre crop) is used."""
    return None


@IMAGE_AUGMENTS.register("imagenet")
def imagenet_augment(size: int = 224, scale: Sequence[float] = (0.08, 1.0), flip: bool = True,
                     color_jitter: float = 0.4, interpolation: str = "bilinear") -> ImageTransform:
    """Standard recipe: random resized crop + flip + colour jitter 0.4 (ImageNet-LT, Places-LT; iNat uses jitter 0).
    ``interpolation``: the crop's resampling (the model's, from data_loader.args.input, when it prescribes one)."""
    return T.Compose(_crop_flip_jitter(size, scale, flip, color_jitter, interpolation))


@IMAGE_AUGMENTS.register("randaugment")
def randaugment_recipe(size: int = 224, scale: Sequence[float] = (0.08, 1.0), color_jitter: float = 0.4,
                       num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.5, prob: float = 0.5,
                       fill: Sequence[int] = (124, 116, 104), interpolation: str = "bilinear") -> ImageTransform:
    """Long-training ("PaCo") recipe: crop + flip + colour jitter (always) + RandAugment rand-n2-m10-mstd0.5."""
    steps = _crop_flip_jitter(size, scale, True, color_jitter, interpolation)
    return T.Compose(steps + [RandAugment(num_ops, magnitude, magnitude_std, prob, fill)])


class RandomGaussianBlur:
    """PIL Gaussian blur with radius ~ U(sigma) (SADE's test-time views)."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)) -> None:
        self.sigma = tuple(sigma)

    def __call__(self, image: Image.Image) -> Image.Image:
        radius = self.sigma[0] + float(torch.rand(())) * (self.sigma[1] - self.sigma[0])
        return image.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma={self.sigma})"


@IMAGE_AUGMENTS.register("sade_view")
def sade_image_view(size: int = 224, scale: Sequence[float] = (0.2, 1.0), jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
                    jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5,
                    blur_sigma: Sequence[float] = (0.1, 2.0), flip: bool = True) -> ImageTransform:
    """SADE's test-time view of an image file: resized crop -> jitter -> grayscale -> blur -> flip (ImageNet-LT /
    Places defaults; iNaturalist uses scale [0.08, 1])."""
    steps: list[ImageTransform] = [
        T.RandomResizedCrop(size, scale=tuple(scale)), T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p),
        T.RandomGrayscale(grayscale_p), T.RandomApply([RandomGaussianBlur(blur_sigma)], p=blur_p)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)
