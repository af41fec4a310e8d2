"""The throughput benchmark and its original-style reference: same inputs, same arithmetic, consistent figures."""
from __future__ import annotations

import re

import pytest
import torch
from torchvision import transforms

from conftest import ROOT
from longtail.data_loader.augment import normalize
from longtail.data_loader.datasets import synthetic_dataset
from tools.benchmark import bare_step_rate, synthetic_bundle
from tools.benchmark import main as benchmark_main
from benchmarks.original_style import PilImageDataset, original_style_config, pil_transform
from longtail.trainer.trainer import Trainer
from longtail.core.build import resolve
from longtail.utils.config import load_config


@pytest.mark.parametrize("name", ["cifar10_lt", "fmnist_lt"])
def test_pil_pipeline_without_augmentation_equals_tensor_normalisation(name: str) -> None:
    """The original-style PIL path feeds the model the same tensors as this code's uint8 batch path."""
    data = synthetic_dataset(name, "test", scale=0.002)
    config = {"data_loader": {"type": name, "args": {"augment": {"type": "none"}}}}
    pil = PilImageDataset(data, pil_transform(config, data))
    expected = normalize(data.images[:4], data.mean, data.std)
    for i in range(4):
        image, label = pil[i]
        assert label == int(data.targets[i])
        torch.testing.assert_close(image, expected[i], atol=1e-5, rtol=1e-5)


def test_pil_transform_follows_the_configured_augmentation() -> None:
    """Crop padding, flip, rotation degrees and AutoAugment come from data_loader.args.augment."""
    data = synthetic_dataset("cifar10_lt", "test", scale=0.002)
    standard = {"data_loader": {"type": "cifar10_lt", "args": {"augment": {
        "type": "standard", "args": {"padding": 2, "flip": False, "rotation": 15}}}}}
    steps = pil_transform(standard, data).transforms
    crop = next(t for t in steps if isinstance(t, transforms.RandomCrop))
    assert crop.padding == 2 and crop.size == (32, 32)
    assert not any(isinstance(t, transforms.RandomHorizontalFlip) for t in steps)
    assert next(t for t in steps if isinstance(t, transforms.RandomRotation)).degrees == [-15.0, 15.0]
    auto = {"data_loader": {"type": "cifar10_lt", "args": {"augment": {"type": "autoaugment", "args": {}}}}}
    assert any(isinstance(t, transforms.AutoAugment) for t in pil_transform(auto, data).transforms)


def test_original_style_config_turns_every_speed_switch_off_without_touching_the_input() -> None:
    """NCHW, looped experts, eager, fp32; the caller's config is left as it was."""
    config = resolve(load_config(ROOT / "configs/cifar100_ir100/balpoe_standard.json"))
    config["arch"]["args"]["batched_experts"] = True
    plain = original_style_config(config)
    assert plain["trainer"]["channels_last"] is False and plain["trainer"]["compile"] is False
    assert plain["trainer"]["amp"] == "off" and plain["arch"]["args"]["batched_experts"] is False
    assert config["trainer"]["channels_last"] is True and config["arch"]["args"]["batched_experts"] is True


def test_bare_step_rate_does_not_train_the_model() -> None:
    """The forward+backward ceiling is measured without changing weights or leaving gradients behind."""
    config = resolve(load_config(ROOT / "configs/fmnist_ir100/balpoe.json"))
    config["data_loader"]["args"]["batch_size"] = 16
    trainer = Trainer(config, torch.device("cpu"), None, None, quiet=True, data=synthetic_bundle(config, torch.device("cpu")))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    assert bare_step_rate(trainer, 2) > 0
    after = trainer.model.state_dict()
    # BN running statistics move (training-mode forward), parameters must not
    for name, _ in trainer.model.named_parameters():
        torch.testing.assert_close(after[name], before[name], atol=0, rtol=0)
    assert all(p.grad is None for p in trainer.model.parameters())


def test_benchmark_compare_prints_a_speed_up_consistent_with_its_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    """``--compare 1``: the printed speed-up is this code's rate over the original-style rate of the round."""
    rc = benchmark_main(["-c", str(ROOT / "configs/fmnist_ir100/balpoe.json"), "--synthetic", "--steps", "2",
                         "--warmup", "1", "--eval_batches", "1", "--compare", "1",
                         "--set", "data_loader.args.batch_size=32"])
    out = capsys.readouterr().out
    assert rc == 0
    train = float(re.search(r"^train: ([\d.]+) images/s", out, re.M).group(1))
    ours, original = map(float, re.search(r"round 1: this code ([\d.]+) images/s, original style ([\d.]+)", out).groups())
    speed_up = float(re.search(r"speed-up ([\d.]+)x", out).group(1))
    assert ours == train and original > 0
    # the rates are printed to 0.1 and the speed-up to 0.01: allow exactly that rounding
    rounding = (ours / original) * (0.05 / ours + 0.05 / original) + 0.005
    assert speed_up == pytest.approx(ours / original, abs=rounding + 1e-9)


def test_benchmark_compare_rejects_image_file_training_sets() -> None:
    """The PIL reference needs in-memory images; image-list data sets get a message pointing at --synthetic."""
    from benchmarks.original_style import original_style_rate

    class FileBacked:
        train_set = object()

    with pytest.raises(ValueError, match="--synthetic"):
        original_style_rate({}, FileBacked(), torch.device("cpu"), 1, 0)  # type: ignore[arg-type]


def test_benchmark_pipeline_records_every_stage(tmp_path, capsys) -> None:
    """--pipeline: each stage is benchmarked on stand-in checkpoints of the stages before it (exact paths), and
    --record keeps its figures with the expected time of its whole schedule; non-SGD stages are marked as such."""
    import json

    record = tmp_path / "timings.json"
    rc = benchmark_main(["--pipeline", str(ROOT / "configs/pipelines/fmnist_ir100_decoupling.json"), "--synthetic",
                         "--steps", "1", "--warmup", "1", "--eval_batches", "1", "--record", str(record),
                         "--set", "data_loader.args.batch_size=32"])
    assert rc == 0
    configs = json.loads(record.read_text())["configs"]
    assert set(configs) == {f"configs/fmnist_ir100/{name}.json" for name in ("ce_linear", "crt", "lws", "tau_norm")}
    assert configs["configs/fmnist_ir100/tau_norm.json"]["training"] is False
    crt = configs["configs/fmnist_ir100/crt.json"]
    expected = (crt["epochs"] * crt["train_epoch_s_estimate"] + crt["validations"] * 10000 / crt["eval_images_per_s"]) / 3600
    assert crt["schedule_hours"] == pytest.approx(expected, rel=0.02) and crt["device"] == "cpu"
    assert "whole schedule" in capsys.readouterr().out


def test_gpu_check_needs_a_gpu(capsys) -> None:
    from tools.gpu_check import main as gpu_check_main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check_main(["--skip_tests"]) == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_data_throughput_prints_both_layouts_per_core_with_the_cpu_model(capsys) -> None:
    """Folder vs shards throughput: the same JPEGs, both layouts timed, the CPU model printed with the figures."""
    assert benchmark_main(["--data_throughput", "6", "--image_size", "40x30", "--augment", "none"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^CPU: .+\(6 JPEGs of 40x30, augment none", out, re.M)
    rates = [float(x) for x in re.findall(r"([0-9.]+) images/s per core", out)]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)


@pytest.mark.slow
def test_synthetic_data_of_an_image_list_config_keeps_its_number_of_views() -> None:
    """An image-file multi-view config (MDCS on ImageNet-LT, two views) benchmarks on synthetic tensors with the same
    two (un-augmented) views, so the loss gets the k*B rows it reads; single-view configs stay un-augmented."""
    mdcs = resolve(load_config(ROOT / "configs/imagenet_lt/mdcs_resnext50.json"))
    loader = synthetic_bundle(mdcs, torch.device("cpu")).train_loader
    assert loader.train_views == 2
    images, targets = next(loader.batches(1))
    assert images.shape[0] == targets.shape[0] == 2 * min(loader.batch_size, len(loader.dataset))
    assert torch.equal(images[: len(images) // 2], images[len(images) // 2:])  # "none" views: the same images
    sade = resolve(load_config(ROOT / "configs/imagenet_lt/sade_resnext50.json"))
    assert synthetic_bundle(sade, torch.device("cpu")).train_loader.augment is None
