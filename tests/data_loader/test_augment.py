"""Batch-level tensor augmentation checked against per-image reference computations."""
import numpy as np
import torch
import torch.nn.functional as F

from longtail.data_loader.augment import (CIFAR10_POLICY, _op_magnitude, apply_op, auto_augment, cutout, normalize, random_crop,
                                 random_flip, random_rotation)


def batch(n=16, c=3, h=12, w=12, seed=0):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_random_crop_is_a_window_of_the_padded_image():
    images = batch()
    out = random_crop(images, 3, torch.Generator().manual_seed(1))
    padded = F.pad(images, (3, 3, 3, 3))
    offsets = set()
    for i in range(len(images)):
        hits = [(dy, dx) for dy in range(7) for dx in range(7) if torch.equal(padded[i, :, dy:dy + 12, dx:dx + 12], out[i])]
        assert hits, f"image {i} is not a crop of its padded version"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets differ per image


def test_flip_flips_a_subset():
    images = batch(64)
    out = random_flip(images, torch.Generator().manual_seed(2))
    flipped = [torch.equal(out[i], images[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], images[i]) for i in range(64)]
    assert all(f or k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 54


def test_rotation_by_zero_and_small_angles():
    images = batch()
    assert torch.equal(random_rotation(images, 0, torch.Generator()), images)
    out = random_rotation(images, 15, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.uint8
    # nearest-neighbour rotation only copies existing pixel values (or the zero fill)
    for i in range(4):
        assert set(out[i].unique().tolist()) <= set(images[i].unique().tolist()) | {0}


def test_same_generator_same_augmentation():
    images = batch()
    a = auto_augment(random_crop(images, 2, torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    b = auto_augment(random_crop(images, 2, torch.Generator().manual_seed(5)), torch.Generator().manual_seed(6))
    assert torch.equal(a, b)


def test_grouped_autoaugment_equals_per_image_application():
    images = batch(48, h=16, w=16, seed=4)
    gen_seed = 11
    out = auto_augment(images, torch.Generator().manual_seed(gen_seed))
    # replay the same draws and apply each image's two ops one image at a time
    rng = np.random.default_rng(gen_seed)  # auto_augment draws on the host with NumPy, seeded with gen's seed
    choice = rng.integers(0, len(CIFAR10_POLICY), size=48)
    fire = rng.random((48, 2))
    sign = np.where(rng.random((48, 2)) < 0.5, -1.0, 1.0)
    changed = 0
    for i in range(48):
        img = images[i:i + 1].clone()
        for slot in range(2):
            op, prob, bin_index = CIFAR10_POLICY[int(choice[i])][slot]
            if fire[i, slot] < prob:
                magnitude = _op_magnitude(op, bin_index, 16, 16) if bin_index is not None else 0.0
                if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"):
                    magnitude *= float(sign[i, slot])
                img = apply_op(img, op, magnitude, [128, 128, 128])
        assert torch.equal(out[i:i + 1], img), f"image {i}"
        changed += not torch.equal(img, images[i:i + 1])
    assert changed > 10


def test_cutout_zeroes_one_square():
    images = torch.full((8, 1, 10, 10), 7, dtype=torch.uint8)
    out = cutout(images, 4, torch.Generator().manual_seed(0))
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert (zeros <= 16).all() and (zeros >= 4).all()


def test_normalize_matches_reference_formula():
    images = batch(2)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = normalize(images, mean, std, channels_last=True)
    ref = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, atol=1e-5)


def test_device_kernels_equal_torchvision_for_every_geometric_op_and_sharpness():
    """The cached-constant kernels that replace torchvision's per-call tensors give torchvision's pixels."""
    from longtail.data_loader.augment import _affine_nearest, _inverse_affine, _sharpness

    images = batch(6, h=14, w=10, seed=9)
    fill = torch.tensor([128.0, 7.0, 250.0])
    for op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        for bin_index in (1, 5, 9):
            for sign in (-1.0, 1.0):
                magnitude = sign * _op_magnitude(op, bin_index, 14, 10)
                theta = torch.tensor(_inverse_affine(op, magnitude, 14, 10), dtype=torch.float32).view(1, 2, 3)
                expected = apply_op(images, op, magnitude, [128, 7, 250])
                assert torch.equal(_affine_nearest(images, theta, fill), expected), (op, magnitude)
    for factor in (0.1, 1.0, 1.9):
        assert torch.equal(_sharpness(images, factor), apply_op(images, "Sharpness", factor - 1.0, [0, 0, 0]))
