"""decode: device — JPEGs decoded by torchvision.io (nvJPEG on GPUs) and transformed on the device, checked on CPU
against the PIL worker path: same decoded pixels, same per-sample parameters, nearly the same batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torchvision.io import decode_jpeg

from conftest import image_list_config
from longtail.data_loader.device_decode import device_plan, read_encoded
from longtail.data_loader.factory import build_data
from longtail.data_loader.image_loader import EncodedReader, SampleReader
from longtail.utils.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official")


def loaders(root, tmp_path, decode, **overrides):
    config = image_list_config(root, tmp_path, **{"data_loader.args.decode": decode, **overrides})
    return build_data(config, torch.device("cpu"))


def test_decoded_pixels_equal_pil(imagenet_lt_dir):
    paths = sorted((imagenet_lt_dir / "images").rglob("*.jpg"))[:12]
    for path in paths:
        data, encoded, size = read_encoded(path.read_bytes())
        assert encoded and size == Image.open(path).size
        pil = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
        assert torch.equal(decode_jpeg(data), pil), path


def test_non_jpeg_files_are_decoded_by_pil(tmp_path):
    path = tmp_path / "x.png"
    pixels = np.random.RandomState(0).randint(0, 256, (9, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data, encoded, size = read_encoded(path.read_bytes())
    assert not encoded and size == (7, 9) and torch.equal(data, torch.from_numpy(pixels).permute(2, 0, 1))


def test_parameters_are_the_pil_transforms_draws(imagenet_lt_dir, tmp_path, monkeypatch):
    """Under the same sample key the device path draws the crop, flip and jitter that the PIL transform used."""
    data = loaders(imagenet_lt_dir, tmp_path, "device")
    loader = data.train_loader
    seen = {}
    crop, jitter = T.RandomResizedCrop.get_params, T.ColorJitter.get_params

    def record_crop(*args, **kwargs):
        seen["crop"] = crop(*args, **kwargs)
        return seen["crop"]

    def record_jitter(*args, **kwargs):
        seen["jitter"] = jitter(*args, **kwargs)
        return seen["jitter"]

    import torchvision.transforms.transforms as v1

    hflip = v1.F.hflip

    def record_flip(image):
        seen["flipped"] = True
        return hflip(image)

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(record_crop))
    monkeypatch.setattr(T.ColorJitter, "get_params", staticmethod(record_jitter))
    monkeypatch.setattr(v1.F, "hflip", record_flip)
    pil_reader = SampleReader(loader.dataset, loader.transform, loader.seed)
    device_reader = EncodedReader(loader.dataset, loader.plan, loader.seed)
    flips = []
    for key in [(i, 2, 7 + i) for i in range(16)]:
        seen["flipped"] = False
        pil_reader[key]
        pil_draws = dict(seen)
        _, _, params, _ = device_reader[key]
        assert tuple(int(v) for v in params[:4]) == tuple(pil_draws["crop"])
        assert [int(v) for v in params[5:9]] == pil_draws["jitter"][0].tolist()
        assert params[9:12] == pytest.approx([float(f) for f in pil_draws["jitter"][1:4]])
        assert bool(params[4]) == pil_draws["flipped"]
        flips.append(pil_draws["flipped"])
    assert 0 < sum(flips) < len(flips)  # both outcomes occurred


def test_device_batches_match_the_pil_batches(imagenet_lt_dir, tmp_path):
    pil, device = loaders(imagenet_lt_dir, tmp_path, "pil"), loaders(imagenet_lt_dir, tmp_path, "device")
    for a_loader, b_loader in ((pil.train_loader, device.train_loader), (pil.test_loader, device.test_loader)):
        for (a, ta), (b, tb) in zip(a_loader.batches(1), b_loader.batches(1)):
            assert torch.equal(ta, tb) and a.shape == b.shape and a.dtype == b.dtype
            # normalised images: resampling/rounding of the tensor kernels differs from PIL by a few grey levels
            assert (a - b).abs().mean() < 0.06, (a - b).abs().mean()


def test_unsupported_settings_are_named(imagenet_lt_dir, tmp_path):
    with pytest.raises(ConfigError, match="decode must be one of pil, device"):
        loaders(imagenet_lt_dir, tmp_path, "gpu")
    with pytest.raises(ConfigError, match="decode 'device' supports the 'imagenet' augmentation"):
        loaders(imagenet_lt_dir, tmp_path, "device", **{"data_loader.args.augment": {"type": "randaugment", "args": {}}})
    assert device_plan(None, 256, 224).scale is None
