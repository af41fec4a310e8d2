"""WebDataset shards of an image-list data set: the same samples, labels, class counts and (for a fixed seed) the
same augmented batches as the folder + list layout, with every sampler; plain WebDataset tars; clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import image_list_config, write_image_lists
from longtail.cli.make_shards import main as make_shards
from longtail.data_loader.factory import build_data
from longtail.data_loader.image_lists import read_image_list
from longtail.data_loader.shards import ShardedImageDataset
from longtail.utils.errors import DataError, DataNotFoundError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A fake ImageNet-LT (36 train / 24 test JPEGs of 8-64 px) and its shards: 10 images per shard, train and test."""
    root = tmp_path_factory.mktemp("lists")
    write_image_lists(root, "ImageNet_LT_")
    config = image_list_config(root, root / "saved")
    (root / "c.json").write_text(json.dumps(config))
    assert make_shards(["-c", str(root / "c.json"), "--out", str(root / "shards"), "--shard_size", "10",
                        "--splits", "train,test"]) == 0
    return root, config


def with_args(config, **args):
    """A copy of the config with more data_loader.args."""
    config = json.loads(json.dumps(config))
    config["data_loader"]["args"].update(**args)
    return config


def with_shards(config, folder, **args):
    """The config reading its training split from ``folder``."""
    return with_args(config, shards=str(folder), **args)


def all_batches(data, epochs=(1, 2)):
    return [batch for epoch in epochs for batch in data.train_loader.batches(epoch)]


@pytest.mark.parametrize("sampler", ["random", "class_balanced"])
def test_shards_give_the_folder_layouts_samples_counts_and_augmented_batches(sharded, sampler):
    root, config = sharded
    folder = build_data(with_args(config, sampler=sampler), CPU)
    shards = build_data(with_shards(config, root / "shards", sampler=sampler), CPU)
    assert isinstance(shards.train_set, ShardedImageDataset) and not isinstance(folder.train_set, ShardedImageDataset)
    assert shards.cls_num_list == folder.cls_num_list == [12, 9, 6, 4, 3, 2]
    paths, labels = read_image_list(root / "txt/ImageNet_LT_train.txt")
    assert [shards.train_set.relative_path(i) for i in range(36)] == paths
    assert torch.equal(shards.train_set.targets, torch.from_numpy(labels))
    a, b = all_batches(folder), all_batches(shards)
    assert len(a) == len(b) == 2 * 5
    for (x1, y1), (x2, y2) in zip(a, b):  # crop, flip and colour jitter drawn per sample: identical
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(a[0][0], a[5][0]), "epochs differ (the comparison is not trivially equal)"


def test_worker_processes_and_device_decoding_read_the_same_shards(sharded):
    root, config = sharded
    reference = all_batches(build_data(config, CPU), epochs=(1,))
    workers = all_batches(build_data(with_shards(config, root / "shards", num_workers=2), CPU), epochs=(1,))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(reference, workers))
    device_folder = build_data(with_args(config, decode="device"), CPU)
    device_shards = build_data(with_shards(config, root / "shards", decode="device"), CPU)
    for (x1, y1), (x2, y2) in zip(all_batches(device_folder, (1,)), all_batches(device_shards, (1,))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_the_shards_are_plain_webdataset_tars_in_list_order(sharded):
    import webdataset as wds

    root, _ = sharded
    tars = sorted(str(p) for p in (root / "shards").glob("train-*.tar"))
    assert len(tars) == 4  # 36 images, 10 per shard
    samples = list(wds.WebDataset(tars, shardshuffle=False))
    paths, labels = read_image_list(root / "txt/ImageNet_LT_train.txt")
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(36)]
    assert [int(s["cls"]) for s in samples] == labels.tolist() and [s["path"].decode() for s in samples] == paths
    assert all(s["jpg"] == (root / "images" / p).read_bytes() for s, p in zip(samples, paths)), "bytes unchanged"


def test_shifted_test_lists_map_onto_a_sharded_test_split_by_path(sharded):
    root, config = sharded
    lines = (root / "txt/ImageNet_LT_test.txt").read_text().splitlines()
    subset = root / "txt/ImageNet_LT_forward5.txt"
    subset.write_text("\n".join(lines[3:11:2]) + "\n")
    try:
        folder = build_data(config, CPU, train=False).test_set
        shards = build_data(with_shards(config, root / "shards"), CPU, train=False).test_set
        assert isinstance(shards, ShardedImageDataset)
        assert shards.test_prior_indices("forward5").tolist() == folder.test_prior_indices("forward5").tolist() == [3, 5, 7, 9]
        images = [shards.load_image(i) for i in (3, 5)]
        assert [np.asarray(im).tolist() for im in images] == [np.asarray(folder.load_image(i)).tolist() for i in (3, 5)]
    finally:
        subset.unlink()


def test_without_test_shards_evaluation_reads_the_lists(sharded, tmp_path):
    root, config = sharded
    only_train = tmp_path / "only_train"
    shutil.copytree(root / "shards", only_train, ignore=shutil.ignore_patterns("test-*"))
    data = build_data(with_shards(config, only_train), CPU)
    assert isinstance(data.train_set, ShardedImageDataset) and not isinstance(data.test_set, ShardedImageDataset)


def test_missing_or_stale_shards_get_one_clear_error(sharded, tmp_path):
    root, config = sharded
    with pytest.raises(DataNotFoundError, match="no shards of the train split in .*lt-make-shards"):
        build_data(with_shards(config, tmp_path / "empty"), CPU)
    copy = tmp_path / "copy"
    shutil.copytree(root / "shards", copy)
    (copy / "train-000002.tar").unlink()
    with pytest.raises(DataNotFoundError, match="shard not found: .*train-000002.tar"):
        build_data(with_shards(config, copy), CPU)
    lists = tmp_path / "txt"
    shutil.copytree(root / "txt", lists)
    train_list = lists / "ImageNet_LT_train.txt"
    train_list.write_text("\n".join(train_list.read_text().splitlines()[:-1]) + "\n")  # one image fewer
    changed = with_shards(config, root / "shards", txt_dir=str(lists))
    with pytest.raises(DataError, match="written from another list"):
        build_data(changed, CPU)


def test_training_from_shards_equals_training_from_the_folders(sharded, tmp_path):
    import longtail

    root, config = sharded
    folder = longtail.train(config, save_dir=str(tmp_path / "a"), limit_batches=3, threads=1)
    shards = longtail.train(with_shards(config, root / "shards"), save_dir=str(tmp_path / "b"), limit_batches=3, threads=1)
    a, b = (torch.load(r.checkpoint, weights_only=True)["model"] for r in (folder, shards))
    assert all(torch.equal(a[k], b[k]) for k in a)
