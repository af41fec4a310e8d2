"""cRT (frozen features, re-initialised head, class-balanced batches) and post-hoc tau-normalisation on tiny data."""
import json
import math
from pathlib import Path

import pytest
import torch

from longtail.data_loader.loader import BatchLoader
from longtail.methods.tau_norm import tau_normalize
from longtail.cli.evaluate import uniform_main
from longtail.cli.tau_norm import main as tau_norm_main
from longtail.cli.train import main as train_main
from longtail.core.build import build_model, resolve
from longtail.trainer.trainer import Trainer
from longtail.utils.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


def fmnist_args(data_dir, save_dir):
    """Overrides that shrink a shipped Fashion-MNIST config to the tiny fixture (1 epoch, 2 batches)."""
    return ["--data_dir", str(data_dir), "--save_dir", str(save_dir), "--epochs", "1", "-d", "cpu", "--quiet",
            "--limit_batches", "2", "--batch_size", "32", "--set", "data_loader.args.imb_factor=0.1",
            "--set", "trainer.tensorboard=false"]


def last_checkpoint(save_dir, name):
    return sorted((Path(save_dir) / name).glob("seed*/last.pth"))[-1]


@pytest.fixture(scope="module")
def crt_runs(fmnist_dir, tmp_path_factory):
    """Stage 1: the Fashion-MNIST CE config with a linear head; stage 2: the cRT config initialised from it."""
    save_dir = tmp_path_factory.mktemp("crt")
    base = fmnist_args(fmnist_dir, save_dir)
    assert train_main(["-c", str(ROOT / "configs/fmnist_ir100/ce.json"), *base, "--set", "arch.args.use_norm=false",
                       "--name", "fmnist_ir100_ce"]) == 0
    stage1 = last_checkpoint(save_dir, "fmnist_ir100_ce")
    assert train_main(["-c", str(ROOT / "configs/fmnist_ir100/crt.json"), *base,
                       "--set", f"init_from.checkpoint={stage1}", "--name", "fmnist_ir100_crt"]) == 0
    return stage1, last_checkpoint(save_dir, "fmnist_ir100_crt")


def test_crt_keeps_features_bit_identical_and_retrains_the_head(crt_runs):
    stage1, crt = (load_checkpoint(p)["model"] for p in crt_runs)
    features = [k for k in stage1 if not k.startswith("head.")]
    assert any("running_mean" in k for k in features)  # BN statistics are frozen too (eval mode)
    for key in features:
        assert torch.equal(stage1[key], crt[key]), key
    assert not torch.equal(stage1["head.weight"], crt["head.weight"])


def chi_square_uniform(labels, num_classes):
    counts = torch.bincount(labels, minlength=num_classes).double()
    expected = counts.sum() / num_classes
    return float(((counts - expected) ** 2 / expected).sum())


def test_crt_trains_on_class_balanced_batches(crt_runs):
    config = resolve(json.loads((crt_runs[1].parent / "config.json").read_text()))
    trainer = Trainer(config, torch.device("cpu"), quiet=True)
    frozen = [n for n, p in trainer.model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("trunk.", "branch.")) for n in frozen)
    trainable = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert trainable == {id(p) for n, p in trainer.model.named_parameters() if n.startswith("head.")}
    loader = trainer.data.train_loader
    counts = trainer.cls_num_list
    assert max(counts) / min(counts) >= 9  # the training set itself is long-tailed
    full = BatchLoader(loader.dataset, 64, loader.sampler, None, seed=1)
    drawn = torch.cat([t for epoch in (1, 2, 3) for _, t in full.batches(epoch)])
    # chi-square with 9 degrees of freedom: 27.9 is the 0.1% critical value; the LT order itself is far above it
    assert chi_square_uniform(drawn, 10) < 27.9
    assert chi_square_uniform(loader.dataset.targets, 10) > 100


def test_tau_normalize_known_matrix():
    weight = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # (E=1, C=2, D=2)
    assert tau_normalize(weight, 1.0).flatten().tolist() == pytest.approx([0.6, 0.8, 0.0, 1.0])
    half = [3 / math.sqrt(5), 4 / math.sqrt(5), 0.0, 2 / math.sqrt(2)]
    assert tau_normalize(weight, 0.5).flatten().tolist() == pytest.approx(half)
    assert torch.equal(tau_normalize(weight, 0.0), weight)


def test_tau_norm_checkpoint_is_evaluable(crt_runs, tmp_path, capsys):
    source = crt_runs[1]
    assert tau_norm_main(["-r", str(source), "--tau", "0.5", "--save_dir", str(tmp_path)]) == 0
    target = last_checkpoint(tmp_path, "fmnist_ir100_crt_taunorm0.5")
    before, after = load_checkpoint(source), load_checkpoint(target)
    w = before["model"]["head.weight"]
    expected = torch.stack([torch.stack([w[e, c] / w[e, c].norm() ** 0.5 for c in range(w.shape[1])]) for e in range(w.shape[0])])
    assert torch.allclose(after["model"]["head.weight"], expected)
    assert torch.count_nonzero(after["model"]["head.bias"]) == 0
    assert after["config"]["name"] == "fmnist_ir100_crt_taunorm0.5"
    assert after["config"]["stage"] == {"type": "tau_norm", "args": {"tau": 0.5, "prefix": "head."}}
    assert after["config"]["init_from"]["checkpoint"] == str(source) and after["cls_num_list"] == before["cls_num_list"]
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"] if not k.startswith("head."))
    assert uniform_main(["-r", str(target), "-d", "cpu"]) == 0
    assert "seed1" in capsys.readouterr().out


def test_tau_norm_rejects_cosine_heads(crt_runs, tmp_path, capsys):
    config = load_checkpoint(crt_runs[1])["config"]
    config["arch"]["args"]["use_norm"] = True
    model = build_model(config, 10, 1)
    path = save_checkpoint({"model": model.state_dict(), "config": config, "cls_num_list": [1] * 10}, tmp_path / "cos.pth")
    assert tau_norm_main(["-r", str(path), "--tau", "0.7", "--save_dir", str(tmp_path / "out")]) == 2
    assert "cosine" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # rejected before any run directory is created


def test_resuming_a_second_stage_does_not_need_the_first_stage_file(crt_runs, tmp_path):
    """Resume restores the run's own weights: the (moved) stage-1 file is not read again, freezing still applies."""
    stage1, crt = crt_runs
    state = load_checkpoint(crt)
    state["config"]["init_from"]["checkpoint"] = str(tmp_path / "moved-away.pth")
    state["epoch"], state["step"] = 0, 1  # as if interrupted after the first batch
    interrupted = save_checkpoint(state, tmp_path / "run" / "last.pth")
    (tmp_path / "run" / "config.json").write_text(json.dumps(state["config"]))
    assert train_main(["-r", str(interrupted), "-d", "cpu", "--quiet"]) == 0
    resumed = load_checkpoint(interrupted)["model"]
    for key in (k for k in resumed if not k.startswith("head.")):
        assert torch.equal(resumed[key], state["model"][key]), key
