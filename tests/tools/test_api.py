"""The API a notebook needs (issue 22): load a checkpoint of any data set, predict a split in three lines, one
naming rule for train.py and the API, test priors in the protocol's order."""
import csv
import shutil

import pytest
import torch

import longtail
from conftest import image_list_config, tiny_config, write_config
from longtail.cli.evaluate import uniform_main
from longtail.cli.train import main as train_main


@pytest.fixture(scope="module")
def folder_run(imagenet_lt_dir, tmp_path_factory):
    """A run on an image folder with 5 classes (the issue's case: build() gave the model 10 classes)."""
    root = tmp_path_factory.mktemp("folder")
    for split, src in (("train", "train"), ("test", "val")):
        for cls in range(5):
            shutil.copytree(imagenet_lt_dir / "images" / src / f"c{cls}", root / "data" / split / f"kind{cls}",
                            ignore=shutil.ignore_patterns("val_*") if split == "train" else None)
    config = image_list_config(imagenet_lt_dir, root / "saved", dataset="image_folder")
    config["data_loader"]["args"] = {"data_dir": str(root / "data"), "image_size": 16, "resize_size": 18,
                                     "batch_size": 8}
    return longtail.train(config, device="cpu"), root


def test_load_sizes_the_model_from_the_checkpoint_and_predict_matches_test_py(folder_run, tmp_path):
    run, _ = folder_run
    loaded = longtail.load(run.checkpoint, device="cpu")
    assert len(loaded.cls_num_list) == 5 and loaded.status == "finished"
    out = longtail.predict(loaded, split="test")
    assert out.expert_logits.shape[-1] == 5 and out.predictions.shape == out.targets.shape
    accuracy = 100.0 * (out.predictions == out.targets).double().mean().item()
    # independent: test.py's reported top-1 of the same checkpoint
    assert uniform_main(["-r", str(run.checkpoint), "-d", "cpu", "--out", str(tmp_path)]) == 0
    reported = float(next(csv.DictReader((tmp_path / "results.csv").open()))["all"])
    assert accuracy == pytest.approx(reported, abs=1e-9)
    train = longtail.predict(run.run_dir, split="train")  # a run directory is enough; no augmentation, data set order
    assert torch.equal(train.targets, longtail.predict(loaded, split="train").targets)
    assert len(train.targets) == sum(loaded.cls_num_list)


def test_train_py_and_the_api_name_runs_by_one_rule(cifar10_dir, tmp_path):
    config = tiny_config(cifar10_dir, tmp_path / "cli", epochs=1)
    path = write_config(tmp_path / "c.json", config)
    assert train_main(["-c", str(path), "-d", "cpu", "--quiet", "--epochs", "1", "--lr", "0.01",
                       "--limit_batches", "1", "--limit_val_batches", "1"]) == 0
    cli_name = next((tmp_path / "cli").iterdir()).name
    api = longtail.train({**config, "trainer": {**config["trainer"], "save_dir": str(tmp_path / "api")}},
                         lr=0.01, epochs=1, limit_batches=1)
    assert cli_name == api.run_dir.parent.name == "tiny_balpoe-epochs1-lr0.01"
    named = longtail.load_config(config, name="mine", epochs=3)
    assert named["name"] == "mine" and named["trainer"]["epochs"] == 3
    assert longtail.load_config(config)["name"] == "tiny_balpoe"  # no override, no suffix


def test_results_keep_the_protocols_prior_order(cifar10_dir, tmp_path):
    run = longtail.train(tiny_config(cifar10_dir, tmp_path, epochs=1), limit_batches=1)
    results = longtail.evaluate(run, priors=["forward50", "forward2", "uniform", "backward2", "backward10"])
    table = results.pivot_table(index="run", columns="prior", values="all", observed=True)
    assert list(table.columns) == ["forward50", "forward2", "uniform", "backward2", "backward10"]  # not alphabetical


def test_run_dir_trains_into_that_exact_folder(cifar10_dir, tmp_path, capsys):
    path = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path / "saved", epochs=1))
    argv = ["-c", str(path), "-d", "cpu", "--quiet", "--limit_batches", "1", "--limit_val_batches", "1"]
    assert train_main([*argv, "--run_dir", str(tmp_path / "here")]) == 0
    assert (tmp_path / "here" / "last.pth").is_file() and not (tmp_path / "saved").exists()
    assert train_main([*argv, "--run_dir", str(tmp_path / "here")]) == 2  # never over an existing run
    assert "already holds a run" in capsys.readouterr().err
