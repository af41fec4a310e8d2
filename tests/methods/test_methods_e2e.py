"""One short training run per new method type on tiny Fashion-MNIST files: baselines, RIDE -> distill -> router."""
import csv
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_config
from longtail.cli.train import main as train_main
from longtail.evaluation.runner import evaluate_uniform
from longtail.cli.evaluate import build_parser, options_from_args, uniform_main
from longtail.cli.flops import main as flops_main
from longtail.utils.checkpoint import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RIDE_LOSS = {"type": "ride", "args": {"diversity_factor": -0.45, "reweight_epoch": 0}}


def method_config(fmnist_dir, save_dir, name, **overrides):
    """tiny_config on Fashion-MNIST without mixup, renamed."""
    return tiny_config(fmnist_dir, save_dir, dataset="fmnist_lt", epochs=1, name=name, combiner={"type": "default"},
                       **overrides)


def train(config, tmp_path, *flags):
    """Train 2 batches of one epoch; returns (exit code, newest run directory or None)."""
    path = write_config(tmp_path / f"{config['name']}.json", config)
    code = train_main(["-c", str(path), "-d", "cpu", "--quiet", "--limit_batches", "2", *flags])
    runs = sorted((Path(config["trainer"]["save_dir"]) / config["name"]).glob("seed*"))
    return code, (runs[-1] if runs else None)


@pytest.mark.parametrize("loss", [
    {"type": "ce_reweight", "args": {}},
    {"type": "focal", "args": {"gamma": 1.0}},
    {"type": "ldam_drw", "args": {"reweight_epoch": 0}},
    {"type": "balanced_softmax", "args": {}},
], ids=lambda block: block["type"])
def test_baseline_losses_train_one_epoch(fmnist_dir, tmp_path, loss):
    config = method_config(fmnist_dir, tmp_path, f"tiny_{loss['type']}", loss=loss, **{"arch.args.num_experts": 1})
    code, run = train(config, tmp_path)
    assert code == 0
    history = list(csv.DictReader((run / "history.csv").open()))
    assert len(history) == 1 and float(history[0]["loss"]) > 0 and "val_accuracy" in history[0]


@pytest.fixture(scope="module")
def ride_runs(fmnist_dir, tmp_path_factory):
    """Stage 1 (3-expert RIDE, also the teacher), a 2-expert distilled student and a router on stage 1."""
    tmp = tmp_path_factory.mktemp("ride")
    code, stage1 = train(method_config(fmnist_dir, tmp, "tiny_ride", loss=RIDE_LOSS), tmp)
    assert code == 0
    distill = method_config(fmnist_dir, tmp, "tiny_ride_distill", distill={"checkpoint": str(stage1 / "last.pth")},
                            loss={"type": "ride_distill", "args": {**RIDE_LOSS["args"], "distill_temperature": 1.5}},
                            **{"arch.args.num_experts": 2})
    code, student = train(distill, tmp)
    assert code == 0
    router = method_config(fmnist_dir, tmp, "tiny_ride_router",
                           loss={"type": "ride_router", "args": {"pos_weight": 100.0}},
                           init_from={"checkpoint": str(stage1 / "last.pth"), "exclude": ["router."],
                                      "freeze": ["trunk.", "branch.", "head."], "strict": True},
                           **{"arch.router": {"type": "ride", "args": {"top_k": 3}},
                              "data_loader.args.sampler": "class_balanced", "optimizer.args.lr": 0.01})
    code, routed = train(router, tmp)
    assert code == 0
    return {"stage1": stage1, "student": student, "router": routed, "tmp": tmp}


def test_distilled_student_trains_from_teacher_checkpoint(ride_runs):
    state = load_checkpoint(ride_runs["student"] / "last.pth")
    assert state["config"]["distill"]["checkpoint"].endswith("last.pth")
    assert state["model"]["head.weight"].shape[0] == 2  # only the 2-expert student is saved, not the teacher
    assert math.isfinite(state["history"][0]["loss"])


def test_distill_block_and_loss_must_agree(fmnist_dir, ride_runs, tmp_path, capsys):
    no_teacher = method_config(fmnist_dir, tmp_path, "no_teacher", loss={"type": "ride_distill", "args": {}})
    assert train(no_teacher, tmp_path)[0] == 2
    err = capsys.readouterr().err
    assert "needs the model output(s) ['teacher_output']" in err and "add the config section 'distill'" in err
    unused = method_config(fmnist_dir, tmp_path, "unused", loss=RIDE_LOSS,
                           distill={"checkpoint": str(ride_runs["stage1"] / "last.pth")})
    assert train(unused, tmp_path)[0] == 2
    assert "'distill' adds ['teacher_output']" in capsys.readouterr().err
    missing = method_config(fmnist_dir, tmp_path, "missing", loss={"type": "ride_distill", "args": {}},
                            distill={"checkpoint": str(tmp_path / "nope" / "last.pth")})
    assert train(missing, tmp_path)[0] == 2
    err = capsys.readouterr().err
    assert "distill.checkpoint" in err and "not found" in err


def test_router_stage_keeps_stage1_frozen(ride_runs):
    stage1 = load_checkpoint(ride_runs["stage1"] / "last.pth")["model"]
    routed = load_checkpoint(ride_runs["router"] / "last.pth")["model"]
    assert any(k.startswith("router.") for k in routed)
    for key, value in stage1.items():  # weights and BN running statistics of trunk, branches and heads unchanged
        assert torch.equal(routed[key], value), key


def test_router_evaluation_reports_experts_and_threshold(ride_runs, capsys):
    checkpoint = str(ride_runs["router"] / "last.pth")
    parser = build_parser("test", with_priors=False)
    rows = {t: evaluate_uniform(options_from_args(parser.parse_args(["-r", checkpoint, "-d", "cpu", "--router_threshold",
                                                                     str(t)]), "test")).iloc[0]
            for t in (0.0, 1.0)}
    out = capsys.readouterr().out
    assert "experts_mean" in out and "pct_1_experts" in out and "mmacs" in out
    assert rows[0.0]["experts_mean"] == 3.0 and rows[0.0]["pct_3_experts"] == 100.0
    assert rows[1.0]["experts_mean"] == 1.0 and rows[1.0]["pct_1_experts"] == 100.0
    assert rows[1.0]["mmacs"] < rows[0.0]["mmacs"] == pytest.approx(rows[0.0]["mmacs_all_experts"])
    config = str(ride_runs["router"] / "config.json")
    assert flops_main(["-c", config, "--experts_used", "100,0,0"]) == 0
    out = capsys.readouterr().out
    assert "expected MACs/image with 100.00 / 0.00 / 0.00 %" in out and "one router decision" in out
    expected = float(out.split("(mean 1.000): ")[1].split(" G")[0]) * 1e3  # G -> M, as the test report
    assert rows[1.0]["mmacs"] == pytest.approx(expected, abs=0.05)  # flops prints G with 4 decimals (0.1 M)
    assert uniform_main(["-r", str(ride_runs["stage1"]), "-d", "cpu", "--router_threshold", "0.7"]) == 2
    assert "needs a checkpoint whose model has a router" in capsys.readouterr().err


def test_shipped_router_config_names_missing_stage1_checkpoint(fmnist_dir, tmp_path, capsys):
    code = train_main(["-c", str(CONFIGS / "fmnist_ir100/ride_router.json"), "-d", "cpu", "--quiet",
                       "--limit_batches", "1", "--data_dir", str(fmnist_dir), "--save_dir", str(tmp_path),
                       "--set", "data_loader.args.imb_factor=0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "init_from.checkpoint" in err and "not found" in err and "--set init_from.checkpoint=" in err
