"""Test-time views (evaluation.views: five crops of the enlarged image, logits averaged) and the resized-crop
augmentation of in-memory images, checked against torchvision's own transforms."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF

from conftest import image_list_config, tiny_config
from longtail.core.build import resolve
from longtail.core.logits import collect_logits
from longtail.data_loader.augment import ResizedCropAugment, resized_crop_boxes
from longtail.data_loader.factory import build_data

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


def test_five_crop_on_in_memory_images_matches_torchvision(cifar10_dir, tmp_path):
    config = tiny_config(cifar10_dir, tmp_path)
    config["data_loader"]["args"]["input"] = {"size": 40, "resize": 44, "interpolation": "bilinear",
                                              "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    config["evaluation"]["views"] = {"type": "five_crop", "args": {"expand": 8}}
    data = build_data(resolve(config), torch.device("cpu"), train=False)
    images, target = next(iter(data.test_loader.batches(0)))
    assert images.shape == (5 * target.shape[0], 3, 40, 40)
    raw = data.test_set.images[:target.shape[0]].float()
    big = F.interpolate((raw / 255 - 0.5) / 0.25, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    for i in range(3):
        expected = torch.stack(TF.five_crop(big[i], [40, 40]))
        assert torch.allclose(images[5 * i:5 * i + 5], expected, atol=1e-5)


def test_five_crop_of_image_files_matches_pil_and_the_logits_are_averaged(imagenet_lt_dir, tmp_path):
    config = image_list_config(imagenet_lt_dir, tmp_path)
    config["evaluation"]["views"] = {"type": "five_crop", "args": {"expand": 6}}
    data = build_data(resolve(config), torch.device("cpu"), train=False)
    images, target = next(iter(data.test_loader.batches(0)))
    dataset = data.test_set
    first = dataset.load_image(0)
    crops = T.FiveCrop(16)(T.Resize(22)(first))
    mean, std = torch.tensor(dataset.mean).view(3, 1, 1), torch.tensor(dataset.std).view(3, 1, 1)
    expected = torch.stack([(TF.pil_to_tensor(c).float() / 255 - mean) / std for c in crops])
    assert torch.allclose(images[:5], expected, atol=1e-5)

    weight = torch.randn(6, 3 * 16 * 16)
    model = lambda x: {"logits": (x.flatten(1) @ weight.t()).unsqueeze(1)}  # noqa: E731  one "expert"
    model.eval = lambda: None  # type: ignore[attr-defined]
    logits, targets = collect_logits(model, data.test_loader)
    assert logits.shape == (len(dataset), 1, 6)
    assert torch.allclose(logits[:target.shape[0], 0], (images.flatten(1) @ weight.t()).view(-1, 5, 6).mean(1), atol=1e-4)


def test_resized_crop_boxes_and_pixels_follow_random_resized_crop():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    boxes = resized_crop_boxes(64, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3), images.device)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = (h * w).float() / (32 * 32)  # rounding of the sides widens the range slightly
    assert (area > 0.08 * 0.7).all() and (area <= 1.0).all() and area.std() > 0.1
    out = ResizedCropAugment(56, (0.08, 1.0), (3 / 4, 4 / 3), False)(images, gen)
    assert out.shape == (64, 3, 56, 56)
    for i in range(4):  # away from the crop border, bilinear F.interpolate of the crop (align_corners False)
        t, l, ch, cw = boxes[i].tolist()
        ref = F.interpolate(images[i:i + 1, :, t:t + ch, l:l + cw].float(), size=(56, 56), mode="bilinear",
                            align_corners=False)
        margin = 56 // min(ch, cw) + 2
        assert torch.allclose(out[i:i + 1, :, margin:-margin, margin:-margin], ref[..., margin:-margin, margin:-margin],
                              atol=1e-3)
