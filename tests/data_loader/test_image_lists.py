"""Txt-list / image-folder data sets, per-image transforms, the worker-based loader and shifted test lists."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import LIST_TRAIN_COUNTS, write_image_lists
from longtail.registry import DATASETS
from longtail.utils.errors import DataNotFoundError
from longtail.data_loader.image_lists import read_image_list
from longtail.data_loader.image_loader import ImageListLoader
from longtail.data_loader.image_transforms import RandAugment, rand_augment_op
from longtail.registry import IMAGE_AUGMENTS
from longtail.data_loader.profiles import shifted_class_counts
from longtail.cli.make_test_priors import main as make_test_priors_main


def build(root, split="train", dataset="imagenet_lt", **args):
    base = {"data_dir": str(root / "images"), "txt_dir": str(root / "txt"), "num_classes": 6, "image_size": 16,
            "resize_size": 18}
    return DATASETS.build({"type": dataset, "args": {**base, **args}}, "data_loader", split=split)


def loader(dataset, augment=True, **kwargs):
    transform = IMAGE_AUGMENTS.build({"type": "randaugment", "args": {"color_jitter": 0.4}}, "augment", size=16) if augment else None
    return ImageListLoader(dataset, kwargs.pop("batch_size", 8), "random", transform, seed=3, **kwargs)


def test_read_image_list_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "list.txt"
    bad.write_text("a/b.jpg 1\na/c.jpg x\n")
    with pytest.raises(ValueError, match=r"list.txt:2: expected 'relative/path/to/image.jpg <integer label>'"):
        read_image_list(bad)
    with pytest.raises(DataNotFoundError, match=r"image list not found: .*missing.txt.*data_txt/README.md"):
        read_image_list(tmp_path / "missing.txt")
    paths, labels = read_image_list(_write(tmp_path / "ok.txt", "dir with space/x.jpg 3\n\ny.png 0\n"))
    assert paths == ["dir with space/x.jpg", "y.png"] and labels.tolist() == [3, 0]


def _write(path, text):
    path.write_text(text)
    return path


def test_imagenet_lt_counts_shapes_and_clear_errors(imagenet_lt_dir, tmp_path):
    train = build(imagenet_lt_dir)
    assert train.cls_num_list == list(LIST_TRAIN_COUNTS) and train.image_shape == (3, 16, 16)
    assert train.loader_kind == "image_list" and len(build(imagenet_lt_dir, "test")) == 24
    with pytest.raises(DataNotFoundError, match=r"image not found: .*nowhere/train/c0/train_0.jpg .*data_dir"):
        build(imagenet_lt_dir, data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=r"image list not found: .*ImageNet_LT_train.txt"):
        build(imagenet_lt_dir, txt_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"label 4 of train/c4/train_0.jpg is outside 0..3"):
        build(imagenet_lt_dir, num_classes=4)


def test_missing_image_mid_epoch_names_the_path(imagenet_lt_dir, tmp_path):
    txt = tmp_path / "txt"
    txt.mkdir()
    lines = (imagenet_lt_dir / "txt" / "ImageNet_LT_train.txt").read_text().splitlines()
    (txt / "ImageNet_LT_train.txt").write_text("\n".join(lines[:3] + ["train/c0/gone.jpg 0"]) + "\n")
    data = build(imagenet_lt_dir, txt_dir=str(txt))
    with pytest.raises(DataNotFoundError, match=r"image not found: .*train/c0/gone.jpg \(listed in .*ImageNet_LT_train.txt\)"):
        list(loader(data, batch_size=4).batches(1))


def test_test_transform_normalises_a_constant_image_exactly(tmp_path):
    Image.new("RGB", (30, 20), (200, 100, 50)).save(tmp_path / "flat.png")
    (tmp_path / "test.txt").write_text("flat.png 0\n")
    (tmp_path / "train.txt").write_text("flat.png 1\n")
    data = DATASETS.build({"type": "txt_list", "args": {"data_dir": str(tmp_path), "txt_dir": str(tmp_path),
                                                        "image_size": 8, "resize_size": 10}}, "data_loader", split="test")
    assert data.num_classes == 2  # inferred from the largest label of the train and test lists
    images, targets = next(ImageListLoader(data, 4, "sequential").batches(0))
    expected = [(200 / 255 - 0.485) / 0.229, (100 / 255 - 0.456) / 0.224, (50 / 255 - 0.406) / 0.225]
    assert images.shape == (1, 3, 8, 8) and targets.tolist() == [0]
    assert torch.allclose(images[0].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    assert float(images.std(dim=(2, 3)).max()) < 1e-6


def test_batches_are_a_function_of_seed_epoch_step_and_resume_exactly(imagenet_lt_dir):
    data = build(imagenet_lt_dir)
    first = list(loader(data).batches(1))
    again = list(loader(data).batches(1))
    resumed = list(loader(data).batches(1, start_step=2))
    other_epoch = next(loader(data).batches(2))
    assert len(first) == 5 and first[-1][0].shape == (4, 3, 16, 16)  # 36 images, batch 8, last batch partial
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first[2:], resumed)) and len(resumed) == 3
    assert not torch.equal(first[0][0], other_epoch[0])
    workers = loader(data, num_workers=2)
    for _ in range(2):  # persistent workers serve two epochs
        assert all(torch.equal(a[0], b[0]) for a, b in zip(first, workers.batches(1)))


def test_rank_shards_reassemble_the_single_process_batch(imagenet_lt_dir):
    data = build(imagenet_lt_dir)
    single = next(loader(data, batch_size=8).batches(1))
    shards = [next(loader(data, batch_size=4, rank=r, world_size=2).batches(1)) for r in (0, 1)]
    for r, (images, targets) in enumerate(shards):  # global position 2j + r = row j of rank r
        assert torch.equal(images, single[0][r::2]) and torch.equal(targets, single[1][r::2])


def test_rand_augment_ops_match_hand_values():
    image = Image.new("RGB", (4, 4), (100, 191, 200))
    fill = (124, 116, 104)
    assert rand_augment_op(image, "SolarizeAdd", 1.0, fill).getpixel((0, 0)) == (210, 191, 200)  # +110 below 128
    assert rand_augment_op(image, "Posterize", 1.0, fill).getpixel((0, 0)) == (96, 176, 192)  # keep 4 bits
    assert rand_augment_op(image, "Solarize", 0.5, fill).getpixel((0, 0)) == (100, 64, 55)  # invert >= 128
    assert rand_augment_op(image, "Solarize", 1.0, fill).getpixel((0, 0)) == (100, 191, 200)  # threshold 256
    assert rand_augment_op(image, "Brightness", 1.0, fill).getpixel((0, 0)) == (190, 255, 255)  # factor 1.9
    assert rand_augment_op(image, "Invert", 0.3, fill).getpixel((0, 0)) == (155, 64, 55)
    assert RandAugment(prob=0.0)(image) is image


def test_shifted_counts_follow_training_frequency_ranks():
    # hand values: floor(4 * 0.5 ** (r / 5)) = 4, 3, 3, 2, 2, 2 for ranks r = 0..5
    assert shifted_class_counts("forward2", 4, [12, 9, 6, 4, 3, 2]) == [4, 3, 3, 2, 2, 2]
    assert shifted_class_counts("backward2", 4, [12, 9, 6, 4, 3, 2]) == [2, 2, 2, 3, 3, 4]
    # classes not sorted by frequency: rank order is class 1, 3, 5, 4, 2, 0
    assert shifted_class_counts("forward2", 4, [2, 12, 3, 9, 4, 6]) == [2, 4, 2, 3, 2, 3]


@pytest.mark.parametrize("classes,n_test,totals", [
    (1000, 50, {"forward50": 12058, "forward25": 14437, "forward10": 19059, "forward5": 24365, "forward2": 35574}),
    (365, 100, {"forward50": 8989, "forward25": 10727, "forward10": 14103, "forward5": 17970, "forward2": 26155}),
    (8142, 3, {"forward2": 12906, "backward2": 12906}),
])
def test_list_sizes_match_the_published_lists(classes, n_test, totals):
    """METHODS.md §1.3 table: line counts of the official ImageNet-LT / Places-LT / iNat shifted lists."""
    train_counts = list(range(classes, 0, -1))
    for prior, lines in totals.items():
        assert sum(shifted_class_counts(prior, n_test, train_counts)) == lines
        assert sum(shifted_class_counts(prior.replace("forward", "backward"), n_test, train_counts)) == lines


def test_make_test_priors_writes_subsets_and_test_set_maps_them(imagenet_lt_dir, tmp_path, capsys):
    txt = tmp_path / "txt"
    shutil.copytree(imagenet_lt_dir / "txt", txt)
    test = build(imagenet_lt_dir, "test", txt_dir=str(txt))
    with pytest.raises(DataNotFoundError, match=r"shifted test list not found: .*ImageNet_LT_forward50.txt.*make_test_priors"):
        test.test_prior_indices("forward50", LIST_TRAIN_COUNTS)
    assert make_test_priors_main(["--test_list", str(txt / "ImageNet_LT_test.txt"), "--train_list",
                                  str(txt / "ImageNet_LT_train.txt"), "--dataset", "imagenet_lt"]) == 0
    assert "ImageNet_LT_backward50.txt" in capsys.readouterr().out
    assert len(list(txt.glob("ImageNet_LT_*ward*.txt"))) == 10
    idx = test.test_prior_indices("forward2", LIST_TRAIN_COUNTS)
    assert torch.bincount(test.targets[idx], minlength=6).tolist() == [4, 3, 3, 2, 2, 2]
    idx = test.test_prior_indices("backward50")  # floor(4 * (1/50) ** (r / 5)) reversed
    assert torch.bincount(test.targets[idx], minlength=6).tolist() == [0, 0, 0, 0, 1, 4]
    assert len(test.test_prior_indices("uniform")) == 24
    (txt / "ImageNet_LT_forward5.txt").write_text("val/c0/nope.jpg 0\n")
    with pytest.raises(ValueError, match=r"ImageNet_LT_forward5.txt:1: val/c0/nope.jpg is not in the test list"):
        test.test_prior_indices("forward5")


def test_custom_sets_draw_priors_without_list_files(imagenet_lt_dir, tmp_path):
    folder = tmp_path / "custom"
    for split, src in (("train", "train"), ("test", "val")):
        for cls in range(6):
            shutil.copytree(imagenet_lt_dir / "images" / src / f"c{cls}", folder / split / f"class_{cls}",
                            ignore=shutil.ignore_patterns("val_*") if split == "train" else None)
    train = DATASETS.build({"type": "image_folder", "args": {"data_dir": str(folder)}}, "data_loader", split="train")
    test = DATASETS.build({"type": "image_folder", "args": {"data_dir": str(folder)}}, "data_loader", split="test")
    assert train.class_names == [f"class_{c}" for c in range(6)] and train.cls_num_list == list(LIST_TRAIN_COUNTS)
    idx = test.test_prior_indices("backward2", train.cls_num_list)
    assert torch.bincount(test.targets[idx], minlength=6).tolist() == [2, 2, 2, 3, 3, 4]
    (folder / "test" / "stranger").mkdir()
    with pytest.raises(ValueError, match="class folders \\['stranger'\\] that the training folder lacks"):
        DATASETS.build({"type": "image_folder", "args": {"data_dir": str(folder)}}, "data_loader", split="test")


def test_inat_and_places_builders_use_their_lists(tmp_path):
    for name, prefix, test_file in (("inat2018", "iNaturalist18_", "iNaturalist18_val.txt"),
                                    ("places_lt", "Places_LT_", "Places_LT_test.txt")):
        root = tmp_path / name
        write_image_lists(root, prefix, train_counts=(3, 2), test_per_class=1, val_per_class=1)
        test = build(root, "test", dataset=name, num_classes=2)
        assert test.source.endswith(test_file) and len(test) == 2
        assert np.allclose(test.mean, (0.466, 0.471, 0.380) if name == "inat2018" else (0.485, 0.456, 0.406))
