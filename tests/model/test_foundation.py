"""Foundation backbones (timm, open_clip): weights from library files, the offline error, recorded SHA-256,
preprocessing from the backbone, PEFT methods (identity at start, trainable sets), text-initialised classifiers."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from longtail.core.build import build_model, load_weights, model_state, resolve
from longtail.registry import MODEL_EXTENSIONS
from longtail.utils.errors import CheckpointError, ConfigError

TINY_CLIP = str(Path(__file__).resolve().parents[1] / "fixtures" / "open_clip" / "tiny-clip.json")


def foundation_config(arch: dict, dataset: str = "cifar100_lt", **extra) -> dict:
    """A config around ``arch`` (shape-only data set: nothing is read)."""
    return {"name": "fm", "arch": arch, "data_loader": {"type": dataset, "args": {"data_dir": "/nonexistent"}},
            "loss": {"type": "ce"}, "optimizer": {"type": "sgd", "args": {"lr": 0.01}}, "trainer": {"epochs": 1},
            **extra}


def timm_arch(**args) -> dict:
    return {"type": "timm", "args": {"model_name": "test_vit", "pretrained": False, "img_size": 32, **args}}


def clip_arch(**args) -> dict:
    return {"type": "open_clip", "args": {"model_name": "tiny-clip", "model_config_file": TINY_CLIP, **args}}


def build(arch: dict, classes: int = 10, **extra) -> torch.nn.Module:
    config = resolve(foundation_config(arch, **extra))
    return build_model(config, classes, 3, [10] * classes)


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A test_vit saved with safetensors (the format timm's hub files use) and the timm model that wrote it."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_vit", pretrained=False, img_size=32).eval()
    path = tmp_path_factory.mktemp("timm") / "test_vit.safetensors"
    safetensors.torch.save_file(net.state_dict(), str(path))
    return path, net


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """The tiny open_clip model's state dict saved with torch.save (open_clip's own checkpoint format)."""
    import open_clip

    open_clip.add_model_config(TINY_CLIP)
    torch.manual_seed(0)
    clip = open_clip.create_model("tiny-clip").eval()
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(clip.state_dict(), path)
    return path, clip


def test_timm_file_loads_by_path_with_equal_features(timm_file):
    path, net = timm_file
    model = build(timm_arch(pretrained=True, pretrained_file=str(path), num_experts=2)).eval()
    x = torch.randn(3, 3, 32, 32)
    expected = net.forward_head(net.forward_features(x), pre_logits=True)  # timm's own pooled features
    feat = model(x)["feat"]
    assert feat.shape == (3, 2, expected.shape[1])
    assert torch.allclose(feat[:, 0], expected, atol=1e-6) and torch.allclose(feat[:, 1], expected, atol=1e-6)
    assert model.base_weights.identity["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_open_clip_file_loads_by_path_with_equal_features(clip_file):
    path, clip = clip_file
    x = torch.randn(2, 3, 32, 32)
    projected = build(clip_arch(pretrained_file=str(path), project=True)).eval()
    assert torch.allclose(projected(x)["feat"][:, 0], clip.encode_image(x), atol=1e-5)
    pooled = build(clip_arch(pretrained_file=str(path), project=False)).eval()  # LIFT: the width before proj
    assert torch.allclose(pooled(x)["feat"][:, 0] @ clip.visual.proj, clip.encode_image(x), atol=1e-5)


def test_expert_blocks_split_gives_the_same_features_and_own_copies(timm_file):
    path, net = timm_file
    model = build(timm_arch(pretrained=True, pretrained_file=str(path), num_experts=3, expert_blocks=2)).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = net.forward_head(net.forward_features(x), pre_logits=True)
    feat = model(x)["feat"]
    for e in range(3):  # every expert's copy starts from the same pretrained blocks
        assert torch.allclose(feat[:, e], expected, atol=1e-5)
    assert len(model.trunk.backbone.blocks) == len(net.blocks) - 2
    tails = model.branch.tails
    assert tails[0].backbone.blocks[0].attn.qkv.weight is not tails[1].backbone.blocks[0].attn.qkv.weight


def test_offline_without_a_file_names_the_weights_and_where_to_put_them(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"timm:test_vit.*pretrained_file.*") as info:
        build(timm_arch(pretrained=True))
    assert "huggingface.co/timm/test_vit" in str(info.value)


def test_resolved_config_records_the_sha256_and_a_different_file_is_refused(timm_file, tmp_path):
    path, net = timm_file
    config = resolve(foundation_config(timm_arch(pretrained=True, pretrained_file=str(path))))
    import hashlib

    assert config["arch"]["args"]["pretrained_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({k: v + 1 for k, v in net.state_dict().items()}, str(other))
    changed = copy.deepcopy(config)
    changed["arch"]["args"]["pretrained_file"] = str(other)
    with pytest.raises(CheckpointError, match="different weights"):
        resolve(changed)


def test_preprocessing_comes_from_the_backbones_data_config(clip_file):
    from timm.data import resolve_data_config
    import timm

    config = resolve(foundation_config({"type": "timm", "args": {"model_name": "test_vit", "pretrained": False}}))
    data = resolve_data_config({}, model=timm.create_model("test_vit", pretrained=False))
    block = config["data_loader"]["args"]["input"]
    assert block["size"] == data["input_size"][-1] == 160
    assert block["resize"] == math.floor(160 / data["crop_pct"]) and block["interpolation"] == data["interpolation"]
    assert tuple(block["mean"]) == tuple(data["mean"]) and tuple(block["std"]) == tuple(data["std"])
    clip_cfg = resolve(foundation_config(clip_arch()))["data_loader"]["args"]["input"]
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert clip_cfg["size"] == 32 and clip_cfg["channels"] == 3 and tuple(clip_cfg["mean"]) == OPENAI_DATASET_MEAN
    assert tuple(clip_cfg["std"]) == OPENAI_DATASET_STD
    # keys the config sets itself win
    own = resolve(foundation_config(clip_arch(), data_loader={"type": "cifar100_lt", "args": {
        "data_dir": "/x", "input": {"interpolation": "bilinear"}}}))
    assert own["data_loader"]["args"]["input"]["interpolation"] == "bilinear"


def with_peft(model: torch.nn.Module, block: dict) -> torch.nn.Module:
    """A copy of ``model`` with the PEFT extension applied (same weights otherwise)."""
    adapted = copy.deepcopy(model)
    adapted.add_extension("peft", MODEL_EXTENSIONS.get("peft")(adapted, block))
    return adapted


@pytest.mark.parametrize("arch", [timm_arch(num_experts=2, expert_blocks=1), clip_arch(num_experts=2, expert_blocks=1)],
                         ids=["timm", "open_clip"])
@pytest.mark.parametrize("block", [{"type": "adaptformer", "args": {"bottleneck": 4}},
                                   {"type": "lora", "args": {"r": 4}},
                                   {"type": "ssf", "args": {"init_std": 0.0}}], ids=lambda b: b["type"])
def test_adapters_and_lora_start_as_the_identity(arch, block):
    torch.manual_seed(1)
    model = build(arch).eval()
    adapted = with_peft(model, block).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(adapted(x)["logits"], model(x)["logits"], atol=1e-6)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") or block["type"][:4] in n or "lora_" in n or "ssf" in n
                             for n in trainable), sorted(trainable)[:5]


@pytest.mark.parametrize("method,expect", [
    ("full", lambda n: True), ("linear", lambda n: n.startswith("head.")),
    ("bitfit", lambda n: n.startswith("head.") or n.endswith("bias")),
    ("layernorm", lambda n: n.startswith("head.") or ".norm" in n or "fc_norm" in n),
    ("vpt_deep", lambda n: n.startswith("head.") or ".vpt." in n),
])
def test_each_method_trains_exactly_its_parameters(method, expect):
    model = with_peft(build(timm_arch(num_experts=2)), {"type": method, "args": {}})
    for name, param in model.named_parameters():
        assert param.requires_grad == expect(name), name


def test_vpt_prompts_are_dropped_before_pooling_and_change_the_output():
    torch.manual_seed(2)
    model = build(timm_arch(num_experts=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    for method in ("vpt_shallow", "vpt_deep"):
        adapted = with_peft(model, {"type": method, "args": {"tokens": 3}}).eval()
        out = adapted(x)
        assert out["feat"].shape == model(x)["feat"].shape and not torch.allclose(out["logits"], model(x)["logits"])
        seen = []
        hook = adapted.trunk.backbone.blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
        adapted(x)
        hook.remove()
        assert seen == [adapted.trunk.seq_len + 3]


def test_checkpoint_holds_trainable_tensors_and_the_base_identity(timm_file, tmp_path):
    path, _ = timm_file
    arch = timm_arch(pretrained=True, pretrained_file=str(path), num_experts=2, expert_blocks=1)
    arch["peft"] = {"type": "adaptformer", "args": {"bottleneck": 4}}
    model = build(arch)
    weights, base = model_state(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    params = {n for n, _ in model.named_parameters()}
    assert base["sha256"] == model.base_weights.identity["sha256"] and base["file"] == str(path)
    assert set(weights) & params == trainable  # frozen base tensors are left out
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.add_(0.5)
    rebuilt = build(arch)
    load_weights(rebuilt, weights, "ckpt", base)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x)["logits"], model.eval()(x)["logits"])
    random_base = build(timm_arch(num_experts=2, expert_blocks=1))
    with pytest.raises(CheckpointError, match="base weights"):
        load_weights(random_base, weights, "ckpt", base)


def test_text_initialised_classifier_equals_the_normalised_prompt_features(clip_file):
    import open_clip
    from longtail.core.hooks import BuildContext
    from longtail.methods.classifier_init import HeadInit

    path, clip = clip_file
    names = ["apple", "sweet_pepper", "maple_tree"]
    data = type("Data", (), {"train_set": type("Set", (), {"class_names": names})()})()
    for project, templates in ((False, "default"), (True, ["a {}.", "a photo of the {}."])):
        model = build(clip_arch(pretrained_file=str(path), project=project, num_experts=2), classes=3)
        spec = {"type": "text", "templates": templates}
        HeadInit(spec, "head_init").setup(model, BuildContext({}, torch.device("cpu"), 3, 3, [1, 1, 1], data=data))
        tokenizer = open_clip.get_tokenizer("tiny-clip")
        texts = ["a photo of a {}."] if templates == "default" else templates
        with torch.no_grad():  # independently: mean of normalised prompt features, then (LIFT) through proj^T
            feats = torch.stack([F.normalize(clip.encode_text(tokenizer([t.format(n.replace("_", " ")) for n in names])),
                                             dim=-1) for t in texts]).mean(0)
            feats = F.normalize(feats, dim=-1)
            expected = F.normalize(feats if project else feats @ clip.visual.proj.t(), dim=-1)
        for e in range(2):
            assert torch.allclose(model.head.weight[e].t(), expected, atol=1e-5)
        assert "text_tower" not in model.__dict__  # dropped after use


def test_pooled_timm_backbones_and_their_limits():
    model = build({"type": "timm", "args": {"model_name": "test_convnext", "pretrained": False, "num_experts": 3}})
    out = model(torch.randn(2, 3, 32, 32))
    assert out["logits"].shape == (2, 3, 10)
    with pytest.raises(ConfigError, match="expert_blocks"):
        build({"type": "timm", "args": {"model_name": "test_convnext", "pretrained": False, "expert_blocks": 1}})
    with pytest.raises(ConfigError, match="ViT backbone"):
        with_peft(model, {"type": "adaptformer", "args": {}})
    with pytest.raises(ConfigError, match="timm has no model"):
        resolve(foundation_config({"type": "timm", "args": {"model_name": "no_such_net"}}))


def test_shipped_class_names_follow_the_label_order():
    from longtail.registry import DATASETS
    from longtail.data_loader.image_lists import read_class_names
    from longtail.utils.resources import find_shipped

    imagenet = read_class_names(find_shipped("data_txt/ImageNet_LT", "data_txt") / "ImageNet_LT_classnames.txt", 1000)
    assert imagenet[0] == "tench" and imagenet[1] == "goldfish"  # n01440764, n01443537: labels 0 and 1 of the lists
    places = read_class_names(find_shipped("data_txt/Places_LT_v2", "data_txt") / "Places_LT_classnames.txt", 365)
    first = (find_shipped("data_txt/Places_LT_v2", "data_txt") / "Places_LT_train.txt").read_text().split("\n", 1)[0]
    assert first.endswith(" 0") and places[0] == first.split("/")[2] == "airfield"
    inat = read_class_names(find_shipped("data_txt/iNaturalist18", "data_txt") / "iNaturalist18_classnames.txt", 8142)
    assert len(set(inat)) == 8142
    with pytest.raises(Exception, match="365 classes"):
        read_class_names(find_shipped("data_txt/ImageNet_LT", "data_txt") / "ImageNet_LT_classnames.txt", 365)
    assert DATASETS.get("imagenet_lt")  # the list data sets read <txt_dir>/<prefix>classnames.txt
