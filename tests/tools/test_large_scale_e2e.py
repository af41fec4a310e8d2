"""End to end on tiny fake txt-list / image-folder data: train -> test.py / test_all_imagenet.py / test_all_inat.py."""
import csv
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, image_list_config, train_with_interrupt, write_config, write_image_lists
from longtail.data_loader.profiles import IMAGENET_TEST_PRIORS
from longtail.cli.make_test_priors import main as make_test_priors_main
from longtail.cli.train import main as train_main
from longtail.evaluation.runner import TestData as EvalData
from longtail.evaluation.runner import prepare, read_checkpoint_file
from longtail.cli.evaluate import priors_main, uniform_main
from longtail.methods.sade import aggregation_settings, model_view_batches
from longtail.utils.checkpoint import load_checkpoint


def run_script(name, argv, monkeypatch):
    """Run a top-level script as ``python name argv`` and return its exit code."""
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / name), run_name="__main__")
    return info.value.code


def make_lists(txt, prefix, dataset):
    assert make_test_priors_main(["--test_list", str(txt / f"{prefix}{'val' if dataset == 'inat2018' else 'test'}.txt"),
                                  "--train_list", str(txt / f"{prefix}train.txt"), "--dataset", dataset]) == 0


def last_checkpoints(save_dir, name):
    return sorted(str(p) for p in (save_dir / name).glob("seed*/last.pth"))


@pytest.fixture(scope="module")
def imagenet_runs(imagenet_lt_dir, tmp_path_factory):
    """Two seeds of a 1-epoch tiny BalPoE run on fake ImageNet-LT, with shifted lists made by make_test_priors."""
    root = tmp_path_factory.mktemp("imagenet_runs")
    txt = root / "txt"
    shutil.copytree(imagenet_lt_dir / "txt", txt)
    make_lists(txt, "ImageNet_LT_", "imagenet_lt")
    config = write_config(root / "c.json", image_list_config(imagenet_lt_dir, root / "saved", **{"data_loader.args.txt_dir": str(txt)}))
    for seed in (1, 2):
        assert train_main(["-c", str(config), "--seed", str(seed), "-d", "cpu", "--quiet"]) == 0
    return root


def test_test_all_imagenet_tables_for_several_checkpoints(imagenet_runs, tmp_path, monkeypatch, capsys):
    ckpts = last_checkpoints(imagenet_runs / "saved", "tiny_imagenet_lt")
    assert len(ckpts) == 2
    assert run_script("test_all_imagenet.py", ["-r", *ckpts, "-d", "cpu", "--posthoc_bias_correction",
                                               "--out", str(tmp_path)], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "±" in out and "with posthoc bias correction" in out  # mean ± std over the two seeds
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 2 * 11 * 2 and [r["prior"] for r in rows[:11]] == IMAGENET_TEST_PRIORS
    sizes = {r["prior"]: int(r["n_images"]) for r in rows}
    # floor(4 * (1/K) ** (r/5)) per frequency rank: forward50 -> 4+1, forward2 -> 4+3+3+2+2+2, uniform -> 24
    assert (sizes["forward50"], sizes["backward50"], sizes["forward2"], sizes["uniform"]) == (5, 5, 16, 24)
    uniform = {(r["seed"], r["posthoc"]): r["all"] for r in rows if r["prior"] == "uniform"}
    assert uniform[("1", "oracle")] == uniform[("1", "none")]


def test_test_py_on_an_image_list_checkpoint(imagenet_runs, capsys):
    ckpt = last_checkpoints(imagenet_runs / "saved", "tiny_imagenet_lt")[0]
    assert uniform_main(["-r", ckpt, "-d", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "expert1" in out and "ece" in out
    assert uniform_main(["-r", ckpt, "-d", "cpu", "--set", f"data_loader.args.txt_dir={imagenet_runs / 'elsewhere'}"]) == 2
    assert "image list not found: " + str(imagenet_runs / "elsewhere" / "ImageNet_LT_test.txt") in capsys.readouterr().err


def test_image_list_training_resumes_exactly(imagenet_lt_dir, tmp_path):
    config = write_config(tmp_path / "c.json", image_list_config(
        imagenet_lt_dir, tmp_path / "a", epochs=2, **{"data_loader.args.augment": {"type": "randaugment", "args": {}},
                                                      "trainer.val_period": 0}))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "3"]) == 0
    reference = load_checkpoint(next((tmp_path / "a").rglob("last.pth")))["model"]
    argv = ["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "3", "--save_dir", str(tmp_path / "b")]
    assert train_with_interrupt(argv, (2, 0)) == 130
    interrupted = next((tmp_path / "b").rglob("last.pth"))
    assert (load_checkpoint(interrupted)["epoch"], load_checkpoint(interrupted)["step"]) == (1, 1)
    assert train_main(["-r", str(interrupted), "-d", "cpu", "--quiet", "--limit_batches", "3"]) == 0
    resumed = load_checkpoint(interrupted)["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_inat_train_and_test_all_inat(tmp_path, monkeypatch, capsys):
    data_dir, txt = write_image_lists(tmp_path, "iNaturalist18_", train_counts=(6, 4, 2), test_per_class=2, val_per_class=3)
    make_lists(txt, "iNaturalist18_", "inat2018")
    config = write_config(tmp_path / "c.json", image_list_config(
        tmp_path, tmp_path / "saved", dataset="inat2018", **{"data_loader.args.num_classes": 3,
                                                             "data_loader.args.augment": {"type": "imagenet", "args": {"color_jitter": 0.0}}}))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet"]) == 0
    ckpt = last_checkpoints(tmp_path / "saved", "tiny_inat2018")
    assert run_script("test_all_inat.py", ["-r", *ckpt, "-d", "cpu", "--out", str(tmp_path / "res")], monkeypatch) == 0
    rows = list(csv.DictReader((tmp_path / "res" / "results.csv").open()))
    assert [r["prior"] for r in rows] == ["forward3", "forward2", "uniform", "backward2", "backward3"]
    assert int(rows[2]["n_images"]) == 9  # iNat's test list is its val list (3 per class)
    capsys.readouterr()


def test_custom_image_folder_works_with_train_test_and_test_all(imagenet_lt_dir, tmp_path, capsys):
    folder = tmp_path / "custom"
    for split, src in (("train", "train"), ("test", "val")):
        for cls in range(6):
            shutil.copytree(imagenet_lt_dir / "images" / src / f"c{cls}", folder / split / f"kind{cls}",
                            ignore=shutil.ignore_patterns("val_*") if split == "train" else None)
    config = image_list_config(imagenet_lt_dir, tmp_path / "saved", dataset="image_folder")
    config["data_loader"]["args"] = {"data_dir": str(folder), "image_size": 16, "resize_size": 18, "batch_size": 8}
    path = write_config(tmp_path / "c.json", config)
    assert train_main(["-c", str(path), "-d", "cpu", "--quiet"]) == 0
    ckpt = last_checkpoints(tmp_path / "saved", "tiny_image_folder")
    assert uniform_main(["-r", *ckpt, "-d", "cpu"]) == 0
    assert priors_main(IMAGENET_TEST_PRIORS, ["-r", *ckpt, "-d", "cpu", "--out", str(tmp_path / "res")]) == 0
    rows = {r["prior"]: int(r["n_images"]) for r in csv.DictReader((tmp_path / "res" / "results.csv").open())}
    assert (rows["forward50"], rows["uniform"]) == (5, 24)  # drawn from the test folder with the spec's procedure
    capsys.readouterr()


def test_dry_run_and_missing_data_messages(imagenet_lt_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.json", image_list_config(imagenet_lt_dir, tmp_path))
    assert train_main(["-c", str(config), "--dry_run", "-d", "cpu"]) == 0
    assert "train images: 36" in capsys.readouterr().out
    assert train_main(["-c", str(config), "--dry_run", "-d", "cpu", "--data_dir", str(tmp_path / "none")]) == 2
    assert "image not found" in capsys.readouterr().err


def test_test_time_aggregation_on_image_files(imagenet_runs, tmp_path, capsys):
    ckpt = last_checkpoints(imagenet_runs / "saved", "tiny_imagenet_lt")[0]
    assert priors_main(["forward5", "uniform"], ["-r", ckpt, "-d", "cpu", "--test_time_aggregation", "--out", str(tmp_path),
                                                 "--set", "evaluation.test_time.sade.epochs=2"]) == 0
    assert capsys.readouterr().out.count("expert weights") == 2
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["prior"] for r in rows] == ["forward5", "uniform"] and {"w0", "w1"} <= set(rows[0])
    for row in rows:
        assert float(row["w0"]) + float(row["w1"]) == pytest.approx(1.0, abs=1e-3)
    # the views: every test image once per epoch, two different augmentations, seeded per (seed, epoch)
    run, data = prepare(read_checkpoint_file(Path(ckpt)), torch.device("cpu"), EvalData(torch.device("cpu")), [])
    idx = torch.arange(len(data.test_set))
    batches = model_view_batches(run.model, data.test_loader, idx, {**aggregation_settings(run.config), "batch_size": 10})
    epoch0, again, epoch1 = (list(batches(e)) for e in (0, 0, 1))
    assert [len(v1) for v1, _ in epoch0] == [10, 10, 4] and epoch0[0][0].shape[1:] == (2, 6)
    assert all(not torch.equal(v1, v2) for v1, v2 in epoch0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch0, again))
    assert not torch.equal(epoch0[0][0], epoch1[0][0])
