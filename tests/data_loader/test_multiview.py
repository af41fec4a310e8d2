"""k views of every image (``multi_view``): layout, seeding, exact resume, the image-list and device-decode paths,
and the builder's check that a multi-view loss gets the views it reads."""
from __future__ import annotations

import pytest
import torch

from conftest import image_list_config, tiny_config
from longtail.core.build import build_without_data, resolve
from longtail.data_loader.augment import BatchAugment
from longtail.data_loader.factory import build_data
from longtail.data_loader.image_transforms import eval_transform
from longtail.data_loader.multiview import MultiViewAugment, stack_views
from longtail.registry import AUGMENTS
from longtail.utils.errors import ConfigError
from longtail.utils.seed import torch_generator

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official")
CROP = {"type": "standard", "args": {"padding": 4, "flip": True}}


def two_views(first=CROP, second=CROP):
    return {"type": "multi_view", "args": {"views": [first, second]}}


def test_views_are_stacked_view_by_view_and_none_keeps_the_image():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    augment = AUGMENTS.build(two_views("none", CROP), "augment")
    out = augment(images, torch_generator("cpu", 7))
    assert augment.num_views == 2 and out.shape == (10, 3, 8, 8)
    assert torch.equal(out[:5], images)  # view 0 is "none": rows 0..B-1 are the images themselves
    assert not torch.equal(out[5:], images)


def test_views_draw_independently_and_reproducibly():
    """Two views with the same augmentation differ (independent draws); the same batch generator gives the same views;
    view v is the view augmentation under the generator derived from (the batch's seed, v)."""
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    augment = AUGMENTS.build(two_views(), "augment")
    out = augment(images, torch_generator("cpu", 3))
    assert not torch.equal(out[:16], out[16:])
    assert torch.equal(out, augment(images, torch_generator("cpu", 3)))
    single = BatchAugment(padding=4, flip=True)
    seed = torch_generator("cpu", 3).initial_seed()
    assert torch.equal(out[16:], single(images, torch_generator("cpu", seed, 1)))


def test_multi_view_blocks_are_checked():
    with pytest.raises(ConfigError, match="at least two"):
        AUGMENTS.build({"type": "multi_view", "args": {"views": [CROP]}}, "augment")
    with pytest.raises(ConfigError, match="list the views flat"):
        AUGMENTS.build({"type": "multi_view", "args": {"views": [CROP, two_views()]}}, "augment")
    with pytest.raises(ConfigError, match="unknown key"):
        AUGMENTS.build({"type": "multi_view", "args": {"views": [CROP, {"type": "standard", "args": {"pad": 1}}]}},
                       "augment")


def test_stack_views_layout():
    per_sample = torch.arange(2 * 3).view(2, 3, 1, 1, 1).float()  # (B=2, k=3, ...)
    images, targets = stack_views(per_sample, torch.tensor([4, 9]))
    assert images.flatten().tolist() == [0, 3, 1, 4, 2, 5] and targets.tolist() == [4, 9, 4, 9, 4, 9]


def test_tensor_loader_repeats_targets_and_resumes_exactly(cifar10_dir, tmp_path):
    config = resolve(tiny_config(cifar10_dir, tmp_path, **{"data_loader.args.augment": two_views()}))
    loader = build_data(config, torch.device("cpu")).train_loader
    assert loader.train_views == 2
    first = list(loader.batches(1))
    images, targets = first[0]
    assert images.shape[0] == 2 * loader.batch_size and torch.equal(targets[:32], targets[32:])
    resumed = list(loader.batches(1, start_step=2))
    assert len(resumed) == len(first) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first[2:], resumed))


def test_image_list_views_pil_and_device(imagenet_lt_dir, tmp_path):
    """PIL path: (2B, C, H, W) batches, targets repeated, the 'none' view is the test transform of the image, exact
    resume. Device-decode path: one plan per view, the same crops as the PIL views (pixels within a few grey levels)."""
    views = {"type": "multi_view", "args": {"views": [{"type": "imagenet", "args": {"color_jitter": 0.4}}, "none"]}}
    pil = build_data(image_list_config(imagenet_lt_dir, tmp_path, **{"data_loader.args.augment": views}),
                     torch.device("cpu")).train_loader
    device = build_data(image_list_config(imagenet_lt_dir, tmp_path, **{"data_loader.args.augment": views,
                                                                         "data_loader.args.decode": "device"}),
                        torch.device("cpu")).train_loader
    assert pil.train_views == device.train_views == 2
    first = list(pil.batches(1))
    images, targets = first[0]
    assert images.shape == (16, 3, 16, 16) and torch.equal(targets[:8], targets[8:])
    order = pil.epoch_order(1)[:8].tolist()
    test_view = eval_transform(pil.dataset.resize_size, pil.dataset.image_size)
    from torchvision.transforms.functional import pil_to_tensor
    from longtail.data_loader.augment import normalize
    expected = torch.stack([pil_to_tensor(test_view(pil.dataset.load_image(i))) for i in order])
    assert torch.allclose(images[8:], normalize(expected, pil.dataset.mean, pil.dataset.std))
    resumed = list(pil.batches(1, start_step=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[1:], resumed))
    for (a, ta), (b, tb) in zip(first, device.batches(1)):
        assert torch.equal(ta, tb) and a.shape == b.shape
        assert (a - b).abs().mean() < 0.06


def test_multi_view_loss_needs_its_views(fmnist_dir, tmp_path):
    base = tiny_config(fmnist_dir, tmp_path, dataset="fmnist_lt", combiner={"type": "default"},
                       loss={"type": "mdcs", "args": {"lambdas": [-0.5, 1.0, 2.5]}})
    with pytest.raises(ConfigError, match="compares 2 augmented views of every image but the training augmentation"):
        build_without_data(resolve(base))
    three = tiny_config(fmnist_dir, tmp_path, dataset="fmnist_lt", combiner={"type": "default"},
                        loss={"type": "mdcs", "args": {"lambdas": [-0.5, 1.0, 2.5]}},
                        **{"data_loader.args.augment": {"type": "multi_view", "args": {"views": [CROP, CROP, "none"]}}})
    with pytest.raises(ConfigError, match="makes 3"):
        build_without_data(resolve(three))
    ok = tiny_config(fmnist_dir, tmp_path, dataset="fmnist_lt", combiner={"type": "default"},
                     loss={"type": "mdcs", "args": {"lambdas": [-0.5, 1.0, 2.5]}},
                     **{"data_loader.args.augment": two_views()})
    assert isinstance(build_without_data(resolve(ok))["augment"], MultiViewAugment)
