"""Training a foundation backbone with PEFT through the real loop: frozen weights stay bit-identical, only trainable
tensors reach the optimizer and the checkpoint, resume is exact, evaluation reloads the base and refuses another."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from conftest import tiny_config, train_with_interrupt, write_config
from longtail.cli.train import main as train_main
from longtail.core.build import model_from_checkpoint
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.errors import CheckpointError

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


@pytest.fixture(scope="module")
def vit_file(tmp_path_factory) -> Path:
    """timm's test_vit (32 px) saved as safetensors: the 'pretrained' base."""
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_vit.safetensors"
    safetensors.torch.save_file(timm.create_model("test_vit", pretrained=False, img_size=32).state_dict(), str(path))
    return path


def vit_config(data_dir: Path, save_dir: Path, weights: Path, epochs: int = 2, **overrides) -> dict:
    """The tiny BalPoE config with 3 AdaptFormer experts (own last block each) on the pretrained test_vit."""
    config = tiny_config(data_dir, save_dir, epochs=epochs, **overrides)
    config["name"] = "tiny_vit"
    config["arch"] = {"type": "timm", "args": {"model_name": "test_vit", "pretrained_file": str(weights), "img_size": 32,
                                                 "num_experts": 3, "expert_blocks": 1, "s": 25},
                      "peft": {"type": "adaptformer", "args": {"bottleneck": 4}}}
    config["lr_scheduler"] = {"type": "cosine", "args": {"T_max": epochs}}
    return config


def run_dir(save_dir: Path) -> Path:
    return sorted(p for p in (save_dir / "tiny_vit").iterdir() if p.is_dir())[0]


def test_frozen_base_is_unchanged_and_only_trainable_tensors_are_optimised_and_saved(cifar10_dir, tmp_path, vit_file):
    from longtail.core.build import resolve
    from longtail.trainer.run import train

    config = resolve(vit_config(cifar10_dir, tmp_path, vit_file, epochs=1))
    seen = {}

    def capture(trainer, epoch, step):
        seen["optimizer"] = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        seen["model"] = trainer.model

    result = train(config, device="cpu", quiet=True, limit_batches=3, callbacks=[capture])
    model = seen["model"]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert seen["optimizer"] == trainable and 0 < len(trainable) < len(list(model.parameters()))
    base = safetensors.torch.load_file(str(vit_file))
    frozen_block = model.trunk.backbone.blocks[0]
    assert torch.equal(frozen_block.attn.qkv.weight, base["blocks.0.attn.qkv.weight"])  # bit-identical after steps
    for e in range(3):
        assert torch.equal(model.branch.tails[e].backbone.blocks[0].mlp.fc1.weight, base["blocks.5.mlp.fc1.weight"])
    state = load_checkpoint(result.checkpoint)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state["model"]) == names | {n for n, _ in model.named_buffers()}
    assert state["base"]["sha256"] and state["base"]["library"] == "timm"
    assert state["parameters"]["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert "trainable parameters" in (result.run_dir / "train.log").read_text()


@pytest.mark.slow
def test_resume_is_exact_and_evaluation_reloads_the_base(cifar10_dir, tmp_path, vit_file):
    config = write_config(tmp_path / "c.json", vit_config(cifar10_dir, tmp_path / "a", vit_file, epochs=2))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet"]) == 0
    reference = load_checkpoint(run_dir(tmp_path / "a") / "last.pth")
    assert train_with_interrupt(["-c", str(config), "-d", "cpu", "--quiet", "--save_dir", str(tmp_path / "b")],
                                (1, 2)) == 130
    interrupted = run_dir(tmp_path / "b") / "last.pth"
    assert train_main(["-r", str(interrupted), "-d", "cpu", "--quiet"]) == 0
    resumed = load_checkpoint(interrupted)
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key

    model, _ = model_from_checkpoint(reference, "ref")
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)["logits"]
    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(vit_file, moved)
    with torch.no_grad():  # a different base file under the recorded name is refused
        weights = safetensors.torch.load_file(str(vit_file))
    safetensors.torch.save_file({k: v * 1.01 for k, v in weights.items()}, str(tmp_path / "changed.safetensors"))
    changed = {**reference, "config": {**reference["config"], "arch": {**reference["config"]["arch"], "args": {
        **reference["config"]["arch"]["args"], "pretrained_file": str(tmp_path / "changed.safetensors")}}}}
    with pytest.raises(CheckpointError, match="different weights"):
        model_from_checkpoint(changed, "ref")
    same = {**reference, "config": {**reference["config"], "arch": {**reference["config"]["arch"], "args": {
        **reference["config"]["arch"]["args"], "pretrained_file": str(moved)}}}}
    assert torch.equal(model_from_checkpoint(same, "ref")[0](x)["logits"], logits)  # same bytes elsewhere: fine
