"""Config loading, overrides, tau_list resolution, clear errors, and every shipped config builds."""
import json
from pathlib import Path

import pytest
import torch

from longtail.cli.train import build_parser, overrides_from_args
from longtail.cli.train import main as train_main
from longtail.core.build import build_without_data, resolve
from longtail.core.combiner import compute_loss
from longtail.model.losses.logit_adjusted import expand_tau_list
from longtail.utils.config import apply_overrides, load_config, set_by_path
from longtail.utils.errors import ConfigError
from longtail.utils.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
# Shipped configs, not the partial files they inherit from (configs/_base_/, see utils/config.py load_config).
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.json")
                 if not {"_base_", "pipelines", "sweeps"} & set(p.relative_to(ROOT / "configs").parts))


def test_tau_limits_and_uniform_spacing():
    assert expand_tau_list("limits", 3, 0, 2) == [0, 1, 2]
    assert expand_tau_list("limits", 7, 0, 2) == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert expand_tau_list("limits", 1, 0, 2) == [1.0]
    assert expand_tau_list("uniform", 3, 0, 2) == pytest.approx([1 / 3, 1, 5 / 3])
    assert expand_tau_list("0;1;2", 3, None, None) == [0, 1, 2]
    assert expand_tau_list("0,1.5,3", 3, None, None) == [0, 1.5, 3]
    with pytest.raises(ConfigError, match="num_experts is 2"):
        expand_tau_list([0, 1, 2], 2, None, None)
    with pytest.raises(ConfigError, match="tau_min"):
        expand_tau_list("limits", 3, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_every_shipped_config_loads_builds_and_runs_a_step(path):
    config = resolve(load_config(path))
    assert config["name"], "every config needs a name"
    built = build_without_data(config)
    model = built["model"]
    c, h, w = built["image_shape"]
    fixed = "input" in config["data_loader"].get("args", {})  # a foundation backbone's own input size (ViT: fixed)
    views = getattr(built["criterion"], "num_views", 1)  # a multi-view loss reads k views of every image, view by view
    x = torch.randn(2 * views, c, h if fixed else min(h, 64), w if fixed else min(w, 64))  # 224 px is slow on CPU
    out = model(x)
    if "teacher_output" in built["criterion"].extra_inputs:  # stand-in teacher: the real one is built from distill.checkpoint
        out["teacher_output"] = out["output"].detach() + torch.randn_like(out["output"])
    loss = compute_loss(built["criterion"], out, torch.tensor([0, 1]).repeat(views)).total
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_cli_overrides_and_num_experts_with_limits():
    config = load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json")
    args = build_parser().parse_args(["--num_experts", "7", "--tau_list", "limits", "--set", "combiner.args.alpha=0.2",
                                      "--epochs", "3", "--lr", "0.05"])
    resolved = resolve(apply_overrides(config, overrides_from_args(args)))
    assert resolved["loss"]["args"]["tau_list"] == pytest.approx([0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2])
    assert resolved["combiner"]["args"]["alpha"] == 0.2 and resolved["trainer"]["epochs"] == 3
    assert resolved["optimizer"]["args"]["lr"] == 0.05
    assert build_without_data(resolved)["model"].num_experts == 7


def test_unknown_type_lists_valid_names():
    config = resolve(load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json"))
    config["loss"]["type"] = "balpoee"
    with pytest.raises(ConfigError) as info:
        build_without_data(config)
    assert "unknown loss 'balpoee' at 'loss.type'" in str(info.value) and "Did you mean 'balpoe'" in str(info.value)
    assert "ce" in str(info.value) and "balanced_softmax" in str(info.value)


def test_unknown_key_and_wrong_type_name_the_key():
    config = resolve(load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json"))
    config["arch"]["args"]["num_expert"] = 3
    with pytest.raises(ConfigError, match=r"unknown key 'arch.args.num_expert'.*Did you mean 'num_experts'"):
        build_without_data(config)
    config = resolve(load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json"))
    config["optimizer"]["args"]["lr"] = "fast"
    with pytest.raises(ConfigError, match=r"'optimizer.args.lr' must be of type float, got 'fast'"):
        build_without_data(config)
    with pytest.raises(ConfigError, match="unknown top-level"):
        resolve({**load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json"), "trainr": {}})
    with pytest.raises(ConfigError, match="trainer.epochs"):
        set_by_path(load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json"), "trainer.epochs", "many")


def test_train_cli_reports_config_errors_without_traceback(tmp_path, capsys):
    bad = load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json")  # resolved _base_ files: the copy stands alone
    bad["data_loader"]["args"]["batch_size"] = "big"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert train_main(["-c", str(path), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert "data_loader.args.batch_size" in err and "Traceback" not in err
    assert train_main(["-c", str(tmp_path / "missing.json")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_registry_rejects_duplicates():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: 2)


def test_misspelt_sibling_key_is_an_error():
    config = resolve(load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json"))
    config["arch"]["routr"] = {"type": "ride"}
    with pytest.raises(ConfigError, match=r"unknown model extension 'routr' at 'arch.routr'. Did you mean 'router'"):
        build_without_data(config)


def test_every_block_is_validated_when_the_config_is_resolved(tmp_path, cifar10_dir):
    """Typos in blocks the engine used to pass through unread are errors naming the key (issue 17)."""
    from conftest import tiny_config
    from longtail.core.build import resolve

    base = tiny_config(cifar10_dir, tmp_path)
    with pytest.raises(ConfigError, match="finetuning_combiner"):
        resolve({**base, "finetuning_combiner": {"initial_epch": 3}})
    resolved = resolve({**base, "finetuning_combiner": {"initial_epoch": 3}})
    assert resolved["finetuning_combiner"] == {"initial_epoch": 3, "type": "default", "args": {}}
    with pytest.raises(ConfigError, match="evaluation.test_time.sade.lrr"):
        resolve({**base, "evaluation": {"test_time": {"sade": {"lrr": 0.1}}}})
    with pytest.raises(ConfigError, match="unknown expert aggregation 'sadee'"):
        resolve({**base, "evaluation": {"test_time": {"sadee": {}}}})
    # a loss's own sibling keys are accepted for that loss only
    with pytest.raises(ConfigError, match="loss.tau_min"):
        resolve({**base, "loss": {"type": "ce", "args": {}, "tau_min": 0}})
    with pytest.raises(ConfigError, match="optimizer.args.lrr"):
        resolve({**base, "optimizer": {"type": "sgd", "args": {"lrr": 0.1}}})
    assert resolve({**base, "loss": {"type": "balpoe", "args": {"tau_list": "limits"}, "tau_min": -1,
                                     "tau_max": 3}})["loss"]["args"]["tau_list"] == [-1.0, 1.0, 3.0]
