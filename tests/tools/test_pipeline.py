"""Pipelines (a method's recipe for several seeds, resumable, stages linked by exact path) and the Python API."""
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from longtail.pipeline import load_pipeline, parse_seeds
from longtail.cli.pipeline import main as pipeline_main
from longtail.core.build import build_without_data, resolve
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.config import apply_overrides, load_config
from longtail.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted((ROOT / "configs" / "pipelines").glob("*.json"))
TINY = ["--set", "trainer.epochs=1", "--set", "data_loader.args.imb_factor=0.1", "--set", "trainer.tensorboard=false",
        "--set", "data_loader.args.batch_size=32", "--limit_batches", "2", "--limit_val_batches", "1"]


@pytest.mark.parametrize("path", PIPELINES, ids=[p.name for p in PIPELINES])
def test_every_shipped_pipeline_loads_and_its_stages_build(path):
    pipeline = load_pipeline(path)
    for stage in pipeline.stages:
        inputs = [(k, "placeholder.pth" if isinstance(v, str) else ["placeholder.pth"] * len(v)) for k, v in stage.inputs.items()]
        config = resolve(apply_overrides(load_config(stage.config), [*stage.set.items(), *inputs]))
        assert build_without_data(config)["model"] is not None
    assert {e.stage for e in pipeline.evaluate} <= {s.name for s in pipeline.stages}


def test_parse_seeds_and_pipeline_errors(tmp_path):
    assert parse_seeds("1-3") == [1, 2, 3] and parse_seeds("1,4-5") == [1, 4, 5] and parse_seeds(2) == [2]
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("one")
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"stages": {"b": {"config": str(ROOT / "configs/fmnist_ir100/crt.json"),
                                                "inputs": {"init_from.checkpoint": "a"}}}}))
    with pytest.raises(ConfigError, match="takes init_from.checkpoint from 'a', which is not an earlier stage"):
        load_pipeline(bad)


def test_decoupling_pipeline_links_stages_by_exact_path_and_resumes(fmnist_dir, tmp_path, capsys):
    args = [str(ROOT / "configs/pipelines/fmnist_ir100_decoupling.json"), "--seeds", "1-2", "--save_dir", str(tmp_path),
            "--data_dir", str(fmnist_dir), "-d", "cpu", *TINY]
    assert pipeline_main(args) == 0
    state = json.loads((tmp_path / "pipelines/fmnist_ir100_decoupling/seed2.json").read_text())["stages"]
    assert list(state) == ["stage1", "crt", "lws", "tau_norm"] and all(s["done"] for s in state.values())
    stage1 = str(Path(state["stage1"]["run_dir"]) / "last.pth")
    for name in ("crt", "lws", "tau_norm"):
        run = load_checkpoint(Path(state[name]["run_dir"]) / "last.pth")
        assert run["config"]["init_from"]["checkpoint"] == stage1 and run["config"]["seed"] == 2
    runs_before = sorted(tmp_path.glob("fmnist_ir100_*/seed*"))
    assert len(runs_before) == 8
    # an interrupted stage (epoch 0 saved, not done) is resumed in its own run directory, finished ones are skipped
    lws_dir = Path(state["lws"]["run_dir"])
    interrupted = load_checkpoint(lws_dir / "last.pth")
    interrupted["epoch"], interrupted["step"] = 0, 1
    torch.save(interrupted, lws_dir / "last.pth")
    state["lws"]["done"] = False
    (tmp_path / "pipelines/fmnist_ir100_decoupling/seed2.json").write_text(json.dumps({"stages": state}))
    assert pipeline_main([*args, "--evaluate"]) == 0
    out = capsys.readouterr().out
    assert "seed 2 lws: resuming" in out and "seed 1 crt: done" in out
    assert sorted(tmp_path.glob("fmnist_ir100_*/seed*")) == runs_before
    assert load_checkpoint(lws_dir / "last.pth")["epoch"] == 1
    results = (tmp_path / "pipelines/fmnist_ir100_decoupling/results.csv").read_text()
    assert results.count("\ntau_norm") == 0 and "lws" in results and "estimate" in results


@pytest.mark.slow
def test_cbe_pipeline_feeds_three_experts_to_the_calibration(fmnist_dir, tmp_path):
    tiny = ["--set", "trainer.epochs=1", "--set", "trainer.tensorboard=false", "--set", "data_loader.args.batch_size=32",
            "--limit_batches", "2", "--limit_val_batches", "1", "--set", "data_loader.args.base.args.imb_factor=0.1"]
    thresholds = ["data_loader.args.many_threshold=30", "data_loader.args.few_threshold=10", "evaluation.many_threshold=30",
                  "evaluation.few_threshold=10", "data_loader.args.holdout_max_per_class=5",
                  "calibration:arch.args.many_threshold=30", "calibration:arch.args.few_threshold=10"]  # one stage only
    args = [str(ROOT / "configs/pipelines/fmnist_ir100_cbe.json"), "--save_dir", str(tmp_path), "--data_dir",
            str(fmnist_dir), "-d", "cpu", *tiny, *[x for t in thresholds for x in ("--set", t)]]
    assert pipeline_main(args) == 0
    state = json.loads((tmp_path / "pipelines/fmnist_ir100_cbe/seed1.json").read_text())["stages"]
    calibration = load_checkpoint(Path(state["calibration"]["run_dir"]) / "last.pth")
    assert calibration["config"]["ensemble"]["checkpoints"] == [
        str(Path(state[g]["run_dir"]) / "last.pth") for g in ("many", "medium", "few")]
    assert calibration["config"]["data_loader"]["args"]["data_dir"] == str(fmnist_dir)


def test_api_trains_and_evaluates_in_three_lines(cifar10_dir, tmp_path):
    import longtail

    config = tiny_config(cifar10_dir, tmp_path, epochs=1)
    run = longtail.train(config, seed=3, limit_batches=2)
    results = longtail.evaluate(run, priors=["forward5", "uniform"], posthoc="oracle")
    assert list(results["prior"]) == ["forward5", "uniform"] * 2 and set(results["posthoc"]) == {"none", "oracle"}
    assert results["seed"].eq(3).all() and results["all"].between(0, 100).all()
    uniform = longtail.evaluate(run.run_dir, uniform=True)
    assert {"ece", "expert0"} <= set(uniform.columns)
    assert longtail.build(config, num_experts=2, tau_list="limits")["model"].num_experts == 2
    with pytest.raises(TypeError, match="unknown keyword"):
        longtail.load_config(config, epoch=3)
