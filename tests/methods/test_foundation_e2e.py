"""The whole workflow with a small timm backbone on tiny Fashion-MNIST-LT files: train (the shipped config's model,
3 experts with their own last ViT block) -> 11 test priors with post-hoc correction and EM, test-time views ->
paper tables."""
from __future__ import annotations

import csv
import json

import pytest

from conftest import write_config
from longtail.cli.evaluate import priors_main
from longtail.cli.tables import main as tables_main
from longtail.cli.train import main as train_main
from longtail.utils.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:.*differs from the official release")]

PRIORS = ["forward50", "forward25", "forward10", "forward5", "forward2", "uniform", "backward2", "backward5",
          "backward10", "backward25", "backward50"]


def test_fmnist_timm_vit_train_eleven_priors_posthoc_tables(fmnist_dir, tmp_path, capsys):
    config = load_config("configs/fmnist_ir100/balpoe_timm_vit.json")
    config["data_loader"]["args"].update({"data_dir": str(fmnist_dir), "imb_factor": 0.1, "batch_size": 32,
                                          "download": False})
    config["trainer"].update({"epochs": 2, "val_period": 1, "tensorboard": False, "save_dir": str(tmp_path / "saved")})
    config["lr_scheduler"]["args"].update({"step1": 1, "step2": 2, "warmup_epoch": 0})
    config["evaluation"].update({"many_threshold": 40, "few_threshold": 15})
    path = write_config(tmp_path / "vit.json", config)
    assert train_main(["-c", str(path), "-d", "cpu", "--quiet"]) == 0
    run = next((tmp_path / "saved" / config["name"]).iterdir())
    saved = json.loads((run / "config.json").read_text())
    assert saved["data_loader"]["args"]["input"]["source"].startswith("timm:vit_tiny_patch16_224")

    out = tmp_path / "results"
    assert priors_main([], ["-r", str(run), "-d", "cpu", "--posthoc_bias_correction", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted({r["prior"] for r in rows}) == sorted(PRIORS) and len(rows) == 11 * 2
    assert all(0.0 <= float(r["all"]) <= 100.0 for r in rows)
    views = tmp_path / "views"  # LIFT's test-time ensembling through the same evaluation
    assert priors_main(["uniform", "backward50"], ["-r", str(run), "-d", "cpu", "--out", str(views), "--set",
                                                    "evaluation.views.type=five_crop", "--set", "evaluation.views.args.expand=4"]) == 0
    assert len(list(csv.DictReader((views / "results.csv").open()))) == 2
    capsys.readouterr()
    assert tables_main([str(out / "results.csv"), "--metrics", "all", "--priors", "forward50,uniform,backward50"]) == 0
    table = capsys.readouterr().out
    assert "forward50 all" in table and config["name"] in table
