"""The official lists shipped in data_txt/: manifest, ImageNet-LT training counts, and make_test_priors reproducing
the per-class count profile of every official shifted list (up to the order of classes with tied training counts)."""
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from longtail.data_loader.image_lists import read_image_list
from longtail.data_loader.official_lists import DATA_TXT, official_digests, read_class_counts
from longtail.data_loader.profiles import DATASET_PRIORS, shifted_prior_counts
from longtail.cli.make_test_priors import main as make_test_priors_main
from longtail.utils.metrics import shot_masks

IMAGENET, PLACES, INAT = DATA_TXT / "ImageNet_LT", DATA_TXT / "Places_LT_v2", DATA_TXT / "iNaturalist18"
SHIFTED = [p for p in DATASET_PRIORS["imagenet_lt"] if p != "uniform"]
# classes whose count differs from the generated list (all among classes with tied training counts); README table
DIFFERING = {
    "ImageNet_LT": {"forward2": 36, "backward2": 38, "forward5": 62, "backward5": 90, "forward10": 48,
                    "backward10": 119, "forward25": 48, "backward25": 124, "forward50": 34, "backward50": 127},
    "Places_LT": {"forward2": 40, "backward2": 42, "forward5": 42, "backward5": 75, "forward10": 36,
                  "backward10": 80, "forward25": 22, "backward25": 90, "forward50": 28, "backward50": 92},
}


def counts_of(path: Path, num_classes: int) -> np.ndarray:
    return np.bincount(read_image_list(path)[1], minlength=num_classes)


def test_every_shipped_list_is_in_the_manifest_and_unchanged():
    digests = official_digests()
    shipped = sorted(p for p in DATA_TXT.rglob("*.txt") if p.parent != DATA_TXT)
    assert len(shipped) == len(digests) == 38  # 34 lists + 4 class-name files (issue 18)
    for path in shipped:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digests[path.name], path


def test_a_modified_official_list_warns_naming_it(tmp_path):
    copy = tmp_path / "ImageNet_LT_forward50.txt"
    lines = (IMAGENET / "ImageNet_LT_forward50.txt").read_text().splitlines()
    copy.write_text("\n".join(lines[1:]) + "\n")  # one image dropped
    with pytest.warns(UserWarning, match=r"ImageNet_LT_forward50.txt: differs from the official ImageNet_LT_forward50.txt"):
        read_image_list(copy)


def test_imagenet_lt_training_counts_and_shot_groups():
    counts = read_class_counts(IMAGENET / "ImageNet_LT_train_counts.txt")
    assert len(counts) == 1000 and sum(counts) == 115_846 and max(counts) == 1280 and min(counts) == 5
    masks = shot_masks(counts)
    assert [int(masks[g].sum()) for g in ("many", "medium", "few")] == [385, 479, 136]


@pytest.mark.parametrize("folder,prefix,counts_source,n_test,num_classes", [
    (IMAGENET, "ImageNet_LT", ["--train_counts", str(IMAGENET / "ImageNet_LT_train_counts.txt")], 50, 1000),
    (PLACES, "Places_LT", ["--train_list", str(PLACES / "Places_LT_train.txt")], 100, 365),
], ids=["imagenet_lt", "places_lt"])
def test_make_test_priors_reproduces_the_official_count_profiles(tmp_path, folder, prefix, counts_source, n_test,
                                                                 num_classes, capsys):
    assert make_test_priors_main(["--test_list", str(folder / f"{prefix}_test.txt"), *counts_source, "--out_dir",
                                  str(tmp_path), "--priors", *SHIFTED]) == 0
    train = (read_class_counts(counts_source[1]) if counts_source[0] == "--train_counts"
             else counts_of(Path(counts_source[1]), num_classes).tolist())
    train = np.asarray(train)
    for prior in SHIFTED:
        official, generated = counts_of(folder / f"{prefix}_{prior}.txt", num_classes), counts_of(tmp_path / f"{prefix}_{prior}.txt", num_classes)
        assert sorted(official) == sorted(shifted_prior_counts(prior, n_test, num_classes))  # the closed form
        assert official.sum() == generated.sum()
        for value in np.unique(train):  # equal within every group of classes with the same training count
            assert sorted(official[train == value]) == sorted(generated[train == value]), (prior, value)
        assert int((official != generated).sum()) == DIFFERING[prefix][prior]


def test_inaturalist_official_lists_against_the_closed_form():
    """K = 2: the closed form's counts exactly; K = 3: the official lists hold 1 (forward) and 8 (backward) classes
    with no image, which the closed form never produces (evaluation uses the official lists)."""
    totals = {}
    for prior in ("forward2", "backward2", "forward3", "backward3"):
        official = counts_of(INAT / f"iNaturalist18_{prior}.txt", 8142)
        formula = shifted_prior_counts(prior, 3, 8142)
        totals[prior] = (int(official.sum()), sum(formula), int((official == 0).sum()))
        if prior.endswith("2"):
            assert sorted(official) == sorted(formula)
    assert totals["forward3"] == (11_147, 11_148, 1) and totals["backward3"] == (11_137, 11_148, 8)


def test_evaluation_reads_the_shipped_lists(tmp_path):
    """A test split whose txt_dir holds the official list uses it (indices looked up by path), not a generated one."""
    from longtail.registry import DATASETS

    txt = tmp_path / "txt"
    txt.mkdir()
    for name in ("ImageNet_LT_test.txt", "ImageNet_LT_forward50.txt", "ImageNet_LT_train_counts.txt"):
        shutil.copy(IMAGENET / name, txt / name)
    first = read_image_list(IMAGENET / "ImageNet_LT_test.txt")[0][0]
    image = tmp_path / "images" / first
    image.parent.mkdir(parents=True)
    image.write_bytes(b"")  # the loader only checks that the first image exists when the split is built
    test = DATASETS.get("imagenet_lt")("test", data_dir=str(tmp_path / "images"), txt_dir=str(txt))
    idx = test.test_prior_indices("forward50")
    official_paths = read_image_list(IMAGENET / "ImageNet_LT_forward50.txt")[0]
    assert len(idx) == 12_058 and [test.relative_path(int(i)) for i in idx[:5]] == official_paths[:5]
