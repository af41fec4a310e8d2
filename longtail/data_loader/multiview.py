"""k augmented views of every training image (docs/methods.md, data augmentation: multiple views).

``"augment": {"type": "multi_view", "args": {"views": [<augment block>, <augment block>, ...]}}`` in
``data_loader.args`` makes every training batch hold k = len(views) differently augmented copies of its B images,
stacked view by view: rows ``v*B .. (v+1)*B - 1`` are view v of the batch's images, and the targets are repeated k
times to match. A view block is any registered augmentation of the loader's kind (``AUGMENTS`` for in-memory tensor
data sets, ``IMAGE_AUGMENTS`` for image lists), ``"none"`` keeping the un-augmented image. Contrastive and
consistency losses read the views back by position (their ``num_views`` must equal k; the builder checks it).

Seeding: view v of a batch draws from its own generator, derived from the batch's augmentation seed and v, so a
batch's views are a pure function of (seed, epoch, step) and resuming mid-epoch reproduces them exactly; the per-image
path draws the views one after the other under the sample's seed (same property). On the device-decode path of image
lists every view has its own device plan: the JPEG is decoded once and each view is cropped, resized, flipped and
jittered from it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from longtail.registry import AUGMENTS, IMAGE_AUGMENTS
from longtail.utils.errors import ConfigError
from longtail.utils.seed import torch_generator

MULTI_VIEW = "multi_view"  # the registered name in both augmentation registries


def _view_blocks(views: Any, where: str) -> list[Any]:
    """The list of view blocks, checked (at least two: one view is the plain augmentation)."""
    if not isinstance(views, (list, tuple)) or len(views) < 2:
        raise ConfigError(f"{where}.args.views must list at least two augmentation blocks (one per view), got {views!r}")
    nested = [i for i, v in enumerate(views) if isinstance(v, dict) and v.get("type") == MULTI_VIEW or v == MULTI_VIEW]
    if nested:
        raise ConfigError(f"{where}.args.views[{nested[0]}] is itself 'multi_view'; list the views flat")
    return list(views)


class MultiViewAugment:
    """Batch augmentation returning k views of a uint8 batch (B, C, H, W) as one (k*B, C, H, W) batch."""

    def __init__(self, views: Sequence[Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None]) -> None:
        self.views = list(views)

    @property
    def num_views(self) -> int:
        """k: the number of copies of every image in a batch."""
        return len(self.views)

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seed = gen.initial_seed()  # a host integer: deriving the views' generators reads nothing from the device
        out = [images if view is None else view(images, torch_generator(images.device, seed, v))
               for v, view in enumerate(self.views)]
        return torch.cat(out)

    def __repr__(self) -> str:
        return f"MultiViewAugment({', '.join(repr(v) for v in self.views)})"


class MultiViewTransform:
    """Per-image transform returning k views of a PIL image (the image-list loader stacks them)."""

    def __init__(self, views: Sequence[Callable[[Any], Any] | None], fallback: Callable[[Any], Any] | None = None) -> None:
        self.views = list(views)
        self.fallback = fallback  # set by the loader: the test transform, for "none" views

    @property
    def num_views(self) -> int:
        """k: the number of copies of every image in a batch."""
        return len(self.views)

    def __call__(self, image: Any) -> list[Any]:
        """The k views, drawn one after the other from torch's global generator (seeded per sample by the loader)."""
        views = []
        for view in self.views:
            transform = view or self.fallback
            if transform is None:
                raise ConfigError("a 'none' view of an image-list multi_view augmentation needs the loader's test "
                                  "transform (build it through the image-list loader)")
            views.append(transform(image))
        return views

    def __repr__(self) -> str:
        return f"MultiViewTransform({', '.join(repr(v) for v in self.views)})"


@AUGMENTS.register(MULTI_VIEW)
def multi_view_augment(views: list, size: int | None = None) -> MultiViewAugment:
    """k views of every image, one augmentation block per view (e.g. a weak and a strong view for consistency
    losses, or two SimCLR-style views for contrastive ones); targets are repeated k times."""
    blocks = _view_blocks(views, "data_loader.args.augment")
    return MultiViewAugment([AUGMENTS.build(b, f"data_loader.args.augment.args.views[{i}]", size=size)
                             for i, b in enumerate(blocks)])


@IMAGE_AUGMENTS.register(MULTI_VIEW)
def multi_view_transform(views: list, size: int = 224) -> MultiViewTransform:
    """k views of every image file, one image augmentation block per view ("none": the test transform)."""
    blocks = _view_blocks(views, "data_loader.args.augment")
    return MultiViewTransform([IMAGE_AUGMENTS.build(b, f"data_loader.args.augment.args.views[{i}]", size=size)
                               for i, b in enumerate(blocks)])


def num_views(augment: Any) -> int:
    """Copies of every image a built training augmentation makes (1 for any single-view augmentation)."""
    return int(getattr(augment, "num_views", 1))


def stack_views(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, k, C, H, W) per-sample views -> (k*B, C, H, W) view by view, with the targets repeated k times."""
    b, k = images.shape[:2]
    return images.transpose(0, 1).reshape(k * b, *images.shape[2:]), targets.repeat(k)
