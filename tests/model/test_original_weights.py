"""Checkpoints of the ORIGINAL BalPoE / SADE / RIDE repos: read without executing pickled objects, converted onto
this framework's models, and giving the original networks' outputs.

The fixtures in tests/fixtures/original/ were produced by running the original repos' own model classes (tiny or
real configs, seeded, BN statistics measured in training mode, then eval mode) and saving the checkpoint dict exactly
as their trainers do (``arch, epoch, state_dict, optimizer, monitor_best, config, criterion``; ``config`` is an
object of a class ``parse_config.ConfigParser`` like the originals', plus an object whose ``__reduce__`` names a
function with a side effect). ``<name>.pth.xz`` is that file xz-compressed for the repository (conv weights were
set to ternary values so that it compresses well); ``<name>.outputs.pt`` holds the original network's eval-mode
outputs on :func:`fixed_input`. The generator ran outside this repository (no original code is copied here).
"""
from __future__ import annotations

import lzma
import math
import pickle
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from longtail.methods.original_repos import convert_original_state_dict, load_original_weights, original_config
from longtail.registry import WEIGHT_FORMATS
from longtail.core.build import build_model
from longtail.utils.errors import CheckpointError
from longtail.utils.foreign import ForeignObject, read_foreign_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "original"
ATOL = 1e-5

# fixture -> (this framework's arch block, class count); the original constructor kwargs are in outputs["meta"]
CASES = {
    # BalPoE's real CIFAR-100 network: expert_resnet_cifar.ResNet_s, 3 experts, widths 16/32/64, NormedLinear
    "balpoe_resnet32_e3": ({"type": "resnet32", "args": {"num_experts": 3, "use_norm": True, "s": 30.0}}, 100),
    # BalPoE single-branch resnet_cifar.ResNet_s (layer2/layer3/linear)
    "balpoe_resnet32_single": ({"type": "resnet32", "args": {"num_experts": 1, "layer2_output_dim": 20,
                                                             "layer3_output_dim": 24, "use_norm": True}}, 10),
    # BalPoE share_layer2: one layer2 module object for all experts (saved once per expert) -> equal copies
    "balpoe_resnet32_share2_e2": ({"type": "resnet32", "args": {"num_experts": 2, "layer2_output_dim": 16,
                                                                "layer3_output_dim": 18, "use_norm": True}}, 10),
    # SADE expert ResNet-32 with nn.Linear heads (weight + bias)
    "sade_resnet32_e3_linear": ({"type": "resnet32", "args": {"num_experts": 3, "layer2_output_dim": 16,
                                                              "layer3_output_dim": 20, "use_norm": False}}, 10),
    # RIDE ride_resnet_cifar, reduce_dimension, saved from nn.DataParallel (module. prefix)
    "ride_resnet32_e2_dataparallel": ({"type": "resnet32", "args": {"num_experts": 2, "reduce_dimension": True,
                                                                    "layer3_output_dim": 28, "use_norm": True}}, 10),
    # RIDE ea_resnet_cifar: experts + expert-assignment router (early exit at test time)
    "ride_ea_resnet32_e3": ({"type": "resnet32", "args": {"num_experts": 3, "layer2_output_dim": 16,
                                                          "layer3_output_dim": 20, "use_norm": True},
                             "router": {"type": "ride", "args": {"top_k": 5}}}, 10),
    # BalPoE Expert_ResNet ResNet-10 (adaptive pooling, 64x64 input)
    "balpoe_resnet10_e3": ({"type": "resnet10", "args": {"num_experts": 3, "layer3_output_dim": 16,
                                                         "layer4_output_dim": 16, "use_norm": True}}, 10),
    # SADE Expert_ResNeXt ResNeXt-50 32x4d (real depth, tiny expert stages), 224 input for the fixed 7x7 pool
    "sade_resnext50_e2": ({"type": "resnext50", "args": {"num_experts": 2, "layer3_output_dim": 16,
                                                         "layer4_output_dim": 16, "use_norm": True}}, 10),
    # SADE single-branch ImageNet ResNet-10 (layer3/layer4/linear), nn.Linear head
    "sade_resnet10_single": ({"type": "resnet10", "args": {"num_experts": 1, "layer3_output_dim": 16,
                                                           "layer4_output_dim": 24, "use_norm": False}}, 10),
    # RIDE RIDEResNet ResNet-10 with share_layer3 (layer3 in the trunk), nn.Linear heads
    "ride_resnet10_share3_e2": ({"type": "resnet10", "args": {"num_experts": 2, "layer3_output_dim": 16,
                                                              "layer4_output_dim": 16, "share_layer3": True,
                                                              "use_norm": False}}, 10),
}
MULTI_EXPERT_PLAIN = [n for n, (arch, _) in CASES.items() if arch["args"]["num_experts"] > 1 and "router" not in arch]


def fixed_input(shape):
    """The generator's input: integer hashing only (exact floats in [-2, 2), no RNG)."""
    i = torch.arange(math.prod(shape), dtype=torch.int64)
    v = ((i * 2654435761 + 12345) >> 11) % 65536
    return (v.to(torch.float32) / 16384.0 - 2.0).reshape(shape)


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    """name -> the original torch.save file (decompressed from the committed .pth.xz)."""
    folder = tmp_path_factory.mktemp("original")
    files = {}
    for name in CASES:
        path = folder / f"{name}.pth"
        path.write_bytes(lzma.decompress((FIXTURES / f"{name}.pth.xz").read_bytes()))
        files[name] = path
    return files


def expected_outputs(name):
    return torch.load(FIXTURES / f"{name}.outputs.pt", weights_only=True)


def build(name, batched_experts=False, **overrides):
    arch, num_classes = CASES[name]
    arch = {**arch, "args": {**arch["args"], "batched_experts": batched_experts, **overrides}}
    return build_model({"arch": arch}, num_classes=num_classes, in_channels=3).eval()


@pytest.fixture
def trap(monkeypatch):
    """An importable ``parse_config`` whose ConfigParser.__setstate__ and record_side_effect log their calls, so a
    normal unpickler demonstrably executes what the fixtures name."""
    calls = []
    module = types.ModuleType("parse_config")

    class ConfigParser:
        def __setstate__(self, state):
            calls.append("ConfigParser.__setstate__")

    def record_side_effect(tag):
        calls.append(tag)
        return tag

    module.ConfigParser, module.record_side_effect = ConfigParser, record_side_effect
    monkeypatch.setitem(sys.modules, "parse_config", module)
    return calls


def max_abs_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------------------------------------- reading safely
def test_fixtures_are_small():
    assert all(p.stat().st_size < 1_000_000 for p in FIXTURES.iterdir())


def test_original_checkpoints_are_read_without_executing_anything(checkpoint_files, trap):
    path = checkpoint_files["balpoe_resnet32_e3"]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # why a reader is needed at all
    state, skipped = read_foreign_checkpoint(path)
    assert trap == []  # neither ConfigParser.__setstate__ nor the payload's function ran
    assert "parse_config.ConfigParser" in skipped and "parse_config.record_side_effect" in skipped
    assert skipped == sorted(skipped)
    config = state["config"]
    assert isinstance(config, ForeignObject) and config.qualname == "parse_config.ConfigParser"
    assert original_config(state)["arch"]["type"] == "ResNet32Model"
    assert original_config(state)["arch"]["args"]["num_experts"] == 3
    assert state["arch"] == "ResNet32Model" and state["epoch"] == 200 and state["monitor_best"] == pytest.approx(0.4321)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert set(state["criterion"]) == {"bsce_weight", "tau_list"}
    assert all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())
    # control: the unrestricted loader does execute the references in the same file
    torch.load(path, weights_only=False)
    assert "ConfigParser.__setstate__" in trap and "payload executed" in trap


def test_tensors_equal_what_torch_reads(checkpoint_files, trap):
    path = checkpoint_files["ride_resnet32_e2_dataparallel"]
    state, _ = read_foreign_checkpoint(path)
    reference = torch.load(path, weights_only=False)["state_dict"]
    assert list(state["state_dict"]) == list(reference)
    for key, value in reference.items():
        got = state["state_dict"][key]
        assert got.dtype == value.dtype and got.shape == value.shape and torch.equal(got, value), key


# ----------------------------------------------------------------------------------------------- same outputs
@pytest.mark.parametrize("name", list(CASES))
def test_converted_weights_give_the_original_outputs(name, checkpoint_files):
    expected = expected_outputs(name)
    meta = expected["meta"]
    state, skipped = read_foreign_checkpoint(checkpoint_files[name])
    assert "parse_config.ConfigParser" in skipped
    model = build(name)
    model.load_state_dict(convert_original_state_dict(state["state_dict"], model), strict=True)
    x = fixed_input(tuple(meta["input_shape"]))
    assert float(x.double().sum()) == meta["input_sum"]
    with torch.no_grad():
        out = model(x)
    for key in ("output", "logits", "feat"):
        if key in expected:
            assert out[key].shape == expected[key].shape, key
            diff = max_abs_diff(out[key], expected[key])
            assert diff <= ATOL * max(1.0, expected[key].abs().max().item()), f"{name} {key}: max |diff| {diff:.3g}"
    if "experts_used" in expected:  # RIDE router: same per-sample early exit
        assert torch.equal(out["experts_used"].long(), expected["experts_used"].long())
        assert set(expected["experts_used"].tolist()) == {1, 2, 3}


@pytest.mark.parametrize("name", MULTI_EXPERT_PLAIN)
def test_grouped_execution_agrees(name, checkpoint_files):
    """The batched (grouped-convolution) path reads the same stacked tensors."""
    expected = expected_outputs(name)
    state, _ = read_foreign_checkpoint(checkpoint_files[name])
    model = build(name, batched_experts=True)
    model.load_state_dict(convert_original_state_dict(state["state_dict"], model), strict=True)
    with torch.no_grad():
        out = model(fixed_input(tuple(expected["meta"]["input_shape"])))
    assert max_abs_diff(out["logits" if "logits" in expected else "output"],
                        expected["logits" if "logits" in expected else "output"]) <= 1e-4


def test_weight_format_original_is_registered_and_strips_dataparallel(checkpoint_files):
    name = "ride_resnet32_e2_dataparallel"
    state, _ = read_foreign_checkpoint(checkpoint_files[name])
    assert state["arch"] == "DataParallel"
    assert all(k.startswith("module.backbone.") for k in state["state_dict"])
    model = build(name)
    weights = WEIGHT_FORMATS.get("original")(str(checkpoint_files[name]), model)
    assert set(weights) == set(model.state_dict())
    model.load_state_dict(weights, strict=True)
    # the same tensors whether or not the file carries the prefixes
    bare = {k.removeprefix("module."): v for k, v in state["state_dict"].items()}
    again = convert_original_state_dict(bare, model)
    assert all(torch.equal(again[k], weights[k]) for k in weights)


def test_stacking_layout(checkpoint_files):
    """Per-expert tensors land in expert order: conv (E*out, in, k, k), BN (E*C,), cosine head (E, D, C)."""
    state, _ = read_foreign_checkpoint(checkpoint_files["balpoe_resnet32_e3"])
    sd = state["state_dict"]
    model = build("balpoe_resnet32_e3")
    w = convert_original_state_dict(sd, model)
    assert w["branch.1.4.conv2.weight"].shape == (3 * 64, 64, 3, 3)
    assert torch.equal(w["branch.1.4.conv2.weight"][64:128], sd["backbone.layer3s.1.4.conv2.weight"])
    assert torch.equal(w["branch.0.0.bn1.running_var"][64:], sd["backbone.layer2s.2.0.bn1.running_var"])
    assert torch.equal(w["head.weight"][2], sd["backbone.linears.2.weight"])  # (D, C) per expert
    assert w["branch.0.0.bn1.num_batches_tracked"] == sd["backbone.layer2s.0.0.bn1.num_batches_tracked"]
    assert torch.equal(w["trunk.3.conv1.weight"], sd["backbone.layer1.2.conv1.weight"])


def test_legacy_torch_save_format(checkpoint_files, tmp_path):
    """Pre-1.6 torch.save streams (no zip) are read too."""
    state, _ = read_foreign_checkpoint(checkpoint_files["sade_resnet32_e3_linear"])
    path = tmp_path / "legacy.pth"
    torch.save({**state, "config": LocalConfig()}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    legacy, skipped = read_foreign_checkpoint(path)
    assert any(s.endswith("LocalConfig") for s in skipped)
    assert all(torch.equal(legacy["state_dict"][k], v) for k, v in state["state_dict"].items())
    model = build("sade_resnet32_e3_linear")
    model.load_state_dict(convert_original_state_dict(legacy["state_dict"], model), strict=True)
    expected = expected_outputs("sade_resnet32_e3_linear")
    with torch.no_grad():
        out = model(fixed_input(tuple(expected["meta"]["input_shape"])))
    assert max_abs_diff(out["logits"], expected["logits"]) <= ATOL * 20


class LocalConfig:
    """A class the reader must not import."""


# ----------------------------------------------------------------------------------------------- clear errors
def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_foreign_checkpoint(path)
    with pytest.raises(CheckpointError, match="random.pth"):
        load_original_weights(str(path), build("sade_resnet32_e3_linear"))


def test_truncated_and_missing_files(checkpoint_files, tmp_path):
    data = checkpoint_files["balpoe_resnet32_single"].read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        read_foreign_checkpoint(cut)
    with pytest.raises(CheckpointError, match="not found"):
        read_foreign_checkpoint(tmp_path / "missing.pth")
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="no data.pkl"):
        read_foreign_checkpoint(archive)


def test_no_state_dict(tmp_path):
    path = tmp_path / "model_only.pth"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="no 'state_dict'"):
        read_foreign_checkpoint(path)


def test_keys_of_no_known_layout(tmp_path):
    path = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"module.encoder.blocks.0.attn.qkv.weight": torch.ones(6, 2),
                               "module.encoder.head.weight": torch.ones(10, 2)}, "config": LocalConfig()}, path)
    state, _ = read_foreign_checkpoint(path)
    with pytest.raises(CheckpointError, match="encoder.blocks.0.attn.qkv.weight"):
        convert_original_state_dict(state["state_dict"], build("sade_resnet32_e3_linear"))
    with pytest.raises(CheckpointError, match="fit no known layout"):
        WEIGHT_FORMATS.get("original")(str(path), build("sade_resnet32_e3_linear"))


@pytest.mark.parametrize("name, overrides, message", [
    ("balpoe_resnet32_e3", {"num_experts": 2}, "num_experts"),
    ("sade_resnet32_e3_linear", {"use_norm": True}, "use_norm false"),
    ("balpoe_resnet32_e3", {"use_norm": False}, "use_norm true"),
    ("balpoe_resnet32_e3", {"reduce_dimension": True}, "shape"),
    ("ride_resnet10_share3_e2", {"share_layer3": False}, "share_layer3"),
    ("balpoe_resnet10_e3", {"share_layer3": True}, "share_layer3"),
])
def test_architecture_mismatches_are_named(name, overrides, message, checkpoint_files):
    state, _ = read_foreign_checkpoint(checkpoint_files[name])
    with pytest.raises(CheckpointError, match=message):
        convert_original_state_dict(state["state_dict"], build(name, **overrides))


def test_family_mismatch_and_missing_router(checkpoint_files):
    cifar, _ = read_foreign_checkpoint(checkpoint_files["balpoe_resnet32_e3"])
    with pytest.raises(CheckpointError, match="CIFAR ResNet-32"):
        convert_original_state_dict(cifar["state_dict"], build("balpoe_resnet10_e3"))
    routed, _ = read_foreign_checkpoint(checkpoint_files["ride_ea_resnet32_e3"])
    arch, num_classes = CASES["ride_ea_resnet32_e3"]
    plain = build_model({"arch": {"type": arch["type"], "args": arch["args"]}}, num_classes=num_classes, in_channels=3)
    with pytest.raises(CheckpointError, match="router"):
        convert_original_state_dict(routed["state_dict"], plain)
    # a stage-1 (router-less) checkpoint still initialises a router model's backbone: router weights stay fresh
    stage1 = {k: v for k, v in routed["state_dict"].items() if "expert_help_pred" not in k}
    weights = convert_original_state_dict(stage1, build("ride_ea_resnet32_e3"))
    assert not any(k.startswith("router.") for k in weights)


def test_init_from_section_reads_original_checkpoints(checkpoint_files):
    """``init_from: {"format": "original"}`` (e.g. RIDE's stage 2 from an original stage-1 run) loads strictly."""
    from longtail.trainer.sections import InitFrom
    name = "balpoe_resnet10_e3"
    model = build(name)
    spec = {"checkpoint": str(checkpoint_files[name]), "format": "original", "strict": True}
    InitFrom(InitFrom.validate(spec, "init_from"), "init_from").load(model)
    expected = expected_outputs(name)
    with torch.no_grad():
        out = model.eval()(fixed_input(tuple(expected["meta"]["input_shape"])))
    assert max_abs_diff(out["logits"], expected["logits"]) <= ATOL * 20


# ------------------------------------------------------------------------------------- test_all_*.py -c CONFIG
@pytest.mark.slow  # 11 priors of a CIFAR-100 test set: 16 s
def test_test_all_evaluates_an_original_checkpoint_with_a_config(checkpoint_files, cifar100_dir, tmp_path, capsys):
    """``test_all_cifar.py -r ORIGINAL.pth -c CONFIG``: reads the original checkpoint without unpickling, builds the
    config's architecture, and reports the accuracy that the converted network gives on the test set."""
    import csv
    import json

    from conftest import tiny_config
    from longtail.data_loader.factory import build_data
    from longtail.cli.evaluate import priors_main

    arch, _ = CASES["balpoe_resnet32_e3"]
    config = tiny_config(cifar100_dir, tmp_path / "saved", dataset="cifar100_lt", arch=arch)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    ckpt = str(checkpoint_files["balpoe_resnet32_e3"])

    code = priors_main(["uniform"], ["-r", ckpt, "-d", "cpu"])
    assert code != 0 and "-c CONFIG" in capsys.readouterr().err  # without a config: a clear message, no traceback

    assert priors_main(["forward5", "uniform"], ["-r", ckpt, "-c", str(config_path), "-d", "cpu",
                                                 "--out", str(tmp_path / "out")]) == 0
    rows = {r["prior"]: r for r in csv.DictReader((tmp_path / "out" / "results.csv").open())}
    assert set(rows) == {"forward5", "uniform"}

    # independent: the converted network (checked against the original outputs above) on every test image
    state, _ = read_foreign_checkpoint(ckpt)
    model = build("balpoe_resnet32_e3")
    model.load_state_dict(convert_original_state_dict(state["state_dict"], model), strict=True)
    data = build_data(config, torch.device("cpu"), train=False)
    correct = total = 0
    with torch.no_grad():
        for images, target in data.test_loader.batches(0):
            correct += (model(images)["output"].argmax(1) == target).sum().item()
            total += target.numel()
    assert float(rows["uniform"]["all"]) == pytest.approx(100.0 * correct / total, abs=1e-6)
