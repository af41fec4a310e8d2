"""data_loader.args.input (the model's preprocessing) reaches every data path: PIL workers, decoding on the device,
in-memory tensors (resized on the device), with its size, resize, interpolation, mean and std."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T

from conftest import image_list_config, tiny_config
from longtail.core.build import resolve
from longtail.data_loader.factory import build_data

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")
SPEC = {"size": 12, "resize": 14, "interpolation": "bicubic", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}


@pytest.mark.parametrize("decode", ["pil", "device"])
def test_image_files_are_transformed_at_the_models_size_and_interpolation(imagenet_lt_dir, tmp_path, decode):
    config = image_list_config(imagenet_lt_dir, tmp_path)
    config["data_loader"]["args"].update({"input": SPEC, "decode": decode})
    data = build_data(resolve(config), torch.device("cpu"))
    test_set, train = data.test_set, data.train_loader
    assert (test_set.image_size, test_set.resize_size, test_set.interpolation) == (12, 14, "bicubic")
    assert test_set.mean == (0.4, 0.5, 0.6) and test_set.image_shape == (3, 12, 12)
    if decode == "pil":
        crop = train.transform.transforms[0]
        assert crop.size == (12, 12) and crop.interpolation == T.InterpolationMode.BICUBIC
        resize = data.test_loader.transform.transforms[0]
        assert resize.size == 14 and resize.interpolation == T.InterpolationMode.BICUBIC
    else:
        assert (train.plan.size, train.plan.interpolation) == (12, "bicubic")
        assert (data.test_loader.plan.resize, data.test_loader.plan.interpolation) == (14, "bicubic")
    images, _ = next(iter(data.test_loader.batches(0)))
    assert images.shape[1:] == (3, 12, 12)


def test_in_memory_images_are_resized_on_the_device(cifar10_dir, tmp_path):
    config = tiny_config(cifar10_dir, tmp_path)
    config["data_loader"]["args"].update({"input": {**SPEC, "size": 40, "resize": 48, "interpolation": "bilinear"},
                                          "augment": "none"})
    data = build_data(resolve(config), torch.device("cpu"))
    images, target = next(iter(data.test_loader.batches(0)))
    mean, std = torch.tensor(SPEC["mean"]).view(1, 3, 1, 1), torch.tensor(SPEC["std"]).view(1, 3, 1, 1)
    raw = (data.test_set.images[:target.shape[0]].float() / 255 - mean) / std
    big = F.interpolate(raw, size=(48, 48), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(images, big[..., 4:44, 4:44], atol=1e-5)  # evaluation: resize, then the centre crop
    train_images, _ = next(iter(data.train_loader.batches(1)))
    assert train_images.shape[1:] == (3, 40, 40)  # training: the whole (augmented) image at the model's size
    gray = tiny_config(cifar10_dir, tmp_path)
    gray["data_loader"]["args"]["input"] = {"size": 32, "mean": [0.5], "std": [0.5], "channels": 3}
    assert build_data(resolve(gray), torch.device("cpu")).test_set.image_shape == (3, 32, 32)
