"""Data sets read from files in the official formats: LT subsets, checksums, missing data, test priors."""
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import idx_bytes, write_fmnist
from longtail.data_loader.datasets import parse_idx_bytes, read_cifar
from longtail.registry import DATASETS
from longtail.utils.errors import DataNotFoundError
from longtail.data_loader.profiles import lt_class_counts, shifted_prior_counts


def test_cifar10_pickles_load_and_subsample_to_profile(cifar10_dir):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        train = DATASETS.get("cifar10_lt")("train", str(cifar10_dir), imb_factor=0.1, download=False)
        test = DATASETS.get("cifar10_lt")("test", str(cifar10_dir), download=False)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert train.cls_num_list == lt_class_counts(60, 10, 0.1)
    assert test.cls_num_list == [20] * 10
    # class-sorted like the reference and every kept image comes from the right class of the raw file
    assert train.targets.tolist() == sorted(train.targets.tolist())
    raw_images, raw_labels, _ = read_cifar(cifar10_dir, 10, train=True)
    for i in (0, 100, len(train) - 1):
        match = np.where((raw_images == train.images[i].numpy()).all(axis=(1, 2, 3)))[0]
        assert len(match) >= 1 and raw_labels[match[0]] == int(train.targets[i])


def test_cifar100_layout_and_split_seed(cifar100_dir):
    build = DATASETS.get("cifar100_lt")
    a = build("train", str(cifar100_dir), imb_factor=0.1, split_seed=0, download=False)
    b = build("train", str(cifar100_dir), imb_factor=0.1, split_seed=0, download=False)
    c = build("train", str(cifar100_dir), imb_factor=0.1, split_seed=5, download=False)
    assert a.cls_num_list == lt_class_counts(20, 100, 0.1)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images) and a.cls_num_list == c.cls_num_list


def test_modified_file_loads_with_warning_naming_it(tmp_path):
    from conftest import write_cifar
    root = write_cifar(tmp_path, 10, 10, 5)  # generated files never match the official checksums
    with pytest.warns(UserWarning, match="data_batch_1.*differs from the official"):
        DATASETS.get("cifar10_lt")("train", str(root), imb_factor=1.0, download=False)


def test_missing_data_error_names_folder_and_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        DATASETS.get("cifar100_lt")("train", str(tmp_path / "nowhere"), download=False)
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "cifar-100-python.tar.gz" in message and "data_dir" in message


def test_fmnist_idx_gz_and_raw(tmp_path):
    gz_dir = write_fmnist(tmp_path / "gz", 30, 10, gz=True)
    raw_dir = write_fmnist(tmp_path / "raw", 30, 10, gz=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = DATASETS.get("fmnist_lt")("train", str(gz_dir), imb_factor=0.1, download=False)
        b = DATASETS.get("fmnist_lt")("train", str(raw_dir), imb_factor=0.1, download=False)
    assert a.images.shape[1:] == (1, 28, 28)
    assert torch.equal(a.images, b.images) and a.cls_num_list == lt_class_counts(30, 10, 0.1)


def test_fmnist_missing_error_mentions_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr("longtail.data_loader.datasets.FMNIST_SYSTEM_DIRS", ())
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        DATASETS.get("fmnist_lt")("train", str(tmp_path), download=False)


def test_idx_parser_rejects_bad_files():
    good = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
    assert parse_idx_bytes(good).tolist() == np.arange(12).reshape(3, 4).tolist()
    with pytest.raises(ValueError, match="magic"):
        parse_idx_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="header says"):
        parse_idx_bytes(good[:-1])


def test_shifted_test_subsets_have_closed_form_counts(cifar10_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        test = DATASETS.get("cifar10_lt")("test", str(cifar10_dir), download=False)
    for prior in ("forward5", "backward10", "uniform"):
        idx = test.test_prior_indices(prior)
        counts = torch.bincount(test.targets[idx], minlength=10).tolist()
        assert counts == shifted_prior_counts(prior, 20, 10)
        assert len(set(idx.tolist())) == len(idx)  # no duplicates
    assert torch.equal(test.test_prior_indices("forward5"), test.test_prior_indices("forward5"))


def test_real_fashion_mnist_if_installed():
    from pathlib import Path
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian package dataset-fashion-mnist not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Debian files decompress to the official bytes: no checksum warning
        train = DATASETS.get("fmnist_lt")("train", "/usr/share/datasets/fashion-mnist", imb_factor=0.01, download=False)
    assert train.cls_num_list == lt_class_counts(6000, 10, 0.01) and len(train) == 14886
    with pytest.raises(DataNotFoundError, match="/elsewhere"):  # an explicit folder without files: no fallback
        DATASETS.get("fmnist_lt")("test", "/elsewhere", download=False)


def test_an_explicit_data_dir_without_the_data_is_an_error_only_the_default_falls_back(tmp_path, monkeypatch):
    """--data_dir pointing at a folder without Fashion-MNIST must not silently train on the system copy (issue 22)."""
    system = write_fmnist(tmp_path / "system", 30, 10)
    monkeypatch.setattr("longtail.data_loader.datasets.FMNIST_SYSTEM_DIRS", (str(system),))
    with pytest.raises(DataNotFoundError, match=str(tmp_path / "typo")):
        DATASETS.get("fmnist_lt")("train", str(tmp_path / "typo"), download=False)
    monkeypatch.chdir(tmp_path)  # the default location data/fashion_mnist is empty here: it falls back
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "using <system copy> instead" (shown once per folder)
        data = DATASETS.get("fmnist_lt")("train", imb_factor=0.1, download=False)
    assert len(data) == sum(lt_class_counts(30, 10, 0.1))


def test_a_failed_download_leaves_no_empty_data_folder(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def offline(root, train, download):
        (Path(root) / "cifar-100-python.tar.gz.partial").write_bytes(b"x")  # what a broken download leaves
        raise RuntimeError("offline")

    monkeypatch.setattr(tvd, "CIFAR100", offline)
    target = tmp_path / "data" / "cifar100"
    with pytest.warns(UserWarning, match="download of cifar100"), pytest.raises(DataNotFoundError):
        DATASETS.get("cifar100_lt")("train", str(target), download=True)
    assert not target.exists() and not (tmp_path / "data").exists()
