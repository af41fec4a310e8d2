"""Test-time views (``evaluation.views``, registry ``TEST_VIEWS``): how the logits pass sees each test image.

"center" is the test transform itself (one view). "five_crop" is LIFT's test-time ensembling: the short side is
resized to the crop size + ``expand`` pixels and the four corner crops and the centre crop are taken; the logits
pass averages the per-expert logits over the views (core/logits.py), so every post-hoc correction, aggregation and
prior estimation works on the ensembled logits. Both data paths take the same crops: PIL transforms for image files,
tensor ops on the device for in-memory data sets.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torchvision.transforms as T

from longtail.data_loader.datasets import resize_batch
from longtail.data_loader.image_transforms import interpolation_mode
from longtail.registry import TEST_VIEWS


class FiveCrop:
    """Resize the short side to size + expand, then the corner crops (tl, tr, bl, br) and the centre crop."""

    num_views = 5

    def __init__(self, expand: int) -> None:
        self.expand = expand

    def pil(self, dataset: Any) -> Callable[[Any], list]:
        """The PIL transform of an image-list data set: one image -> a list of 5 crops."""
        size = dataset.image_size
        return T.Compose([T.Resize(size + self.expand, interpolation=interpolation_mode(dataset.interpolation)),
                          T.FiveCrop(size), list])

    def tensor(self, images: torch.Tensor, size: int, interpolation: str) -> torch.Tensor:
        """Normalised float batch (B, C, H, W) -> (B * 5, C, size, size), the 5 views of an image consecutive."""
        big = resize_batch(images, size + self.expand, interpolation)
        h, w = big.shape[-2:]
        cy, cx = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's centre crop
        corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (cy, cx)]
        crops = [big[..., t:t + size, l:l + size] for t, l in corners]
        return torch.stack(crops, dim=1).flatten(0, 1)

    def __repr__(self) -> str:
        return f"FiveCrop(expand={self.expand})"


@TEST_VIEWS.register("center")
def center_view() -> None:
    """The test transform: short side resized, one centre crop (the default)."""
    return None


@TEST_VIEWS.register("five_crop")
def five_crop(expand: int = 24) -> FiveCrop:
    """LIFT's test-time ensembling: five crops of the image enlarged by ``expand`` pixels, logits averaged."""
    return FiveCrop(expand)
