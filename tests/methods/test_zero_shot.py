"""Zero-shot CLIP as an evaluable run: the init_only stage writes a checkpoint whose logits are 100 x the cosine of
the image embedding and the class prompts' text embeddings (computed here with open_clip directly)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from longtail.core.build import model_from_checkpoint, resolve
from longtail.trainer.run import train
from longtail.utils.checkpoint import load_checkpoint

TINY_CLIP = str(Path(__file__).resolve().parents[1] / "fixtures" / "open_clip" / "tiny-clip.json")
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


@pytest.mark.slow
def test_zero_shot_checkpoint_logits_are_scaled_prompt_cosines(cifar10_dir, tmp_path):
    import open_clip

    open_clip.add_model_config(TINY_CLIP)
    torch.manual_seed(0)
    clip = open_clip.create_model("tiny-clip").eval()
    weights = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), weights)
    config = tiny_config(cifar10_dir, tmp_path / "saved")
    config["arch"] = {"type": "open_clip", "args": {"model_name": "tiny-clip", "model_config_file": TINY_CLIP,
                                                      "pretrained_file": str(weights), "project": True, "s": 100},
                      "peft": "linear"}
    config["head_init"] = {"type": "text"}
    config["loss"] = {"type": "ce"}
    config["stage"] = {"type": "init_only", "args": {}}
    result = train(resolve(config), device="cpu", quiet=True)
    state = load_checkpoint(result.checkpoint)
    assert set(state["model"]) == {"head.weight"} and state["base"]["library"] == "open_clip"  # frozen tower: not saved
    model, _ = model_from_checkpoint(state, "zero-shot")
    x = torch.randn(4, 3, 32, 32)
    names = [f"class{i}" for i in range(10)]  # the fixture's CIFAR-10 meta names
    tokenizer = open_clip.get_tokenizer("tiny-clip")
    with torch.no_grad():
        text = F.normalize(clip.encode_text(tokenizer([f"a photo of a {n}." for n in names])), dim=-1)
        expected = 100 * F.normalize(clip.encode_image(x), dim=-1) @ text.t()
        assert torch.allclose(model(x)["output"], expected, atol=1e-3)
