"""Extension points: a method defined outside the repository (config 'imports'), the registry's type matcher,
the CLI's error handling (--debug) and exact resume of a non-SGD stage."""
import json
from typing import Sequence

import pytest
import torch

from conftest import tiny_config, write_config
from longtail.cli.train import main as train_main
from longtail.core.build import resolve
from longtail.trainer.run import train
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.errors import ConfigError
from longtail.utils.registry import value_matches

PLUGIN = '''
"""A user's loss living outside the repository: halves the cross-entropy of every expert."""
import torch.nn.functional as F
from longtail.model.losses.base import ExpertLoss, LossOutput
from longtail.registry import LOSSES


class HalfCE(ExpertLoss):
    def forward(self, logits, target):
        per_expert = 0.5 * F.cross_entropy(logits.flatten(0, 1), target.repeat_interleave(logits.shape[1]),
                                           reduction="none").view(logits.shape[0], -1).mean(0)
        return LossOutput(per_expert.mean(), per_expert)


@LOSSES.register("{name}")
def half_ce(cls_num_list: list[int]) -> HalfCE:
    """Half cross-entropy."""
    return HalfCE()
'''


def test_value_matches_sequences_and_scalars():
    assert not value_matches(5, Sequence[float])
    assert value_matches([1, 2.5], Sequence[float]) and not value_matches(["a"], Sequence[float])
    assert value_matches((1, 2), list[int]) and not value_matches([True], list[int])
    assert value_matches(None, float | None) and not value_matches("x", float | None)


def test_a_method_outside_the_repository_is_loaded_by_the_config_imports(tmp_path, cifar10_dir, monkeypatch):
    module = "my_lab_losses_for_test"
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("{name}", "half_ce_for_test"))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tiny_config(cifar10_dir, tmp_path / "saved", epochs=1, loss={"type": "half_ce_for_test", "args": {}},
                         combiner={"type": "default"}, imports=[module])
    code = train_main(["-c", str(write_config(tmp_path / "c.json", config)), "-d", "cpu", "--quiet",
                       "--limit_batches", "1", "--limit_val_batches", "1"])
    assert code == 0
    with pytest.raises(ConfigError, match="plugin module 'no_such_module_xyz'"):
        resolve({**config, "imports": ["no_such_module_xyz"]})


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x"}))
    assert train_main(["-c", str(bad), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config is missing required section(s)") and "Traceback" not in err
    with pytest.raises(ConfigError, match="missing required section"):
        train_main(["-c", str(bad), "--dry_run", "--debug"])


def test_a_bug_in_a_loss_keeps_its_traceback(tmp_path, cifar10_dir, monkeypatch):
    """Only the framework's own error types become one-line errors; a plugin's bug surfaces as itself."""
    module = "my_buggy_loss_for_test"
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("{name}", "buggy_for_test").replace(
        "return LossOutput(per_expert.mean(), per_expert)", "raise ValueError('bug inside the loss')"))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tiny_config(cifar10_dir, tmp_path / "saved", epochs=1, loss={"type": "buggy_for_test", "args": {}},
                         combiner={"type": "default"}, imports=[module])
    with pytest.raises(ValueError, match="bug inside the loss"):
        train_main(["-c", str(write_config(tmp_path / "c.json", config)), "-d", "cpu", "--quiet", "--limit_batches", "1"])


def test_tau_norm_stage_resumed_after_finishing_does_nothing(tmp_path, cifar10_dir):
    stage1_config = tiny_config(cifar10_dir, tmp_path / "saved", epochs=1, loss={"type": "ce", "args": {}},
                                combiner={"type": "default"}, **{"arch.args.num_experts": 1, "arch.args.use_norm": False})
    stage1 = train(resolve(stage1_config), "cpu", quiet=True, limit_batches=1, limit_val_batches=1).checkpoint
    config = resolve({**stage1_config, "name": "tn", "stage": {"type": "tau_norm", "args": {"tau": 1.0}},
                      "init_from": {"checkpoint": str(stage1), "strict": True}})
    result = train(config, "cpu", quiet=True)
    state = load_checkpoint(result.checkpoint)
    norms = state["model"]["head.weight"].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # tau = 1: unit-norm class vectors
    again = train(config, "cpu", resume=result.checkpoint, resume_state=state, quiet=True)
    assert torch.equal(load_checkpoint(again.checkpoint)["model"]["head.weight"], state["model"]["head.weight"])
