"""Class-Balanced Experts: held-out split, group relabelling with an "other" class, the calibration module, end to end."""
import csv
import json
import math
import signal
from pathlib import Path

import pytest
import torch

from longtail.registry import DATASETS
from longtail.data_loader.profiles import lt_class_counts
from longtail.data_loader.subsets import group_indices, holdout_count, holdout_split, relabel_map, subset_info
from longtail.methods.cbe import ExpertCalibration
from longtail.cli.train import build_parser, overrides_from_args
from longtail.cli.train import main as train_main
from longtail.trainer.run import config_for_run, train
from longtail.utils.config import load_config
from longtail.cli.evaluate import priors_main, uniform_main
from longtail.utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")
TINY_COUNTS = [60, 46, 35, 27, 21, 16, 12, 10, 7, 6]  # 60 per class, imb_factor 0.1
MEDIUM = [3, 4, 5, 6, 7]  # 10 <= n <= 30


def calibrate(calibration: list[str], experts: list) -> int:
    """Run the cbe_calibration stage of the calibration config on the given expert checkpoints."""
    return train_main([*calibration, "--set", "ensemble.checkpoints=" + json.dumps([str(p) for p in experts])])


def test_holdout_split_counts_and_disjointness():
    targets = torch.repeat_interleave(torch.arange(10), torch.tensor(TINY_COUNTS))
    keep, held = holdout_split(targets, 10, 0.2, 5, seed=0)
    held_counts = torch.bincount(targets[held], minlength=10).tolist()
    assert held_counts == [5, 5, 5, 5, 4, 3, 2, 2, 1, 1]  # min(5, max(1, floor(0.2 n)))
    assert [holdout_count(n, 0.2, 5) for n in (1, 2, 3)] == [0, 1, 1]  # a class never loses all its images
    assert len(set(keep.tolist()) & set(held.tolist())) == 0 and len(keep) + len(held) == len(targets)
    again = holdout_split(targets, 10, 0.2, 5, seed=0)[1]
    assert torch.equal(held, again) and not torch.equal(held, holdout_split(targets, 10, 0.2, 5, seed=1)[1])


def test_relabel_map_and_open_set_sampling_on_a_hand_example():
    assert relabel_map([3, 1], 5).tolist() == [2, 0, 2, 1, 2]  # closed classes in increasing label order, other = k
    targets = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 0])
    idx = group_indices(targets, [1, 3], ratio=2.0, seed=0)
    chosen = targets[idx]
    assert len(idx) == 4 + 2  # every in-group image + floor(4 / 2) others
    assert (chosen == 1).sum() == 2 and (chosen == 3).sum() == 2
    assert torch.equal(idx, idx.sort().values)


def subset_args(data_dir, **extra):
    base = {"type": "cifar10_lt", "args": {"data_dir": str(data_dir), "imb_factor": 0.1, "download": False}}
    return {"base": base, "holdout_fraction": 0.2, "holdout_max_per_class": 5, "many_threshold": 30,
            "few_threshold": 10, "seed": 0, **extra}


def test_subset_splits_match_hand_counts_and_the_data_free_info(cifar10_dir):
    args = subset_args(cifar10_dir, group="medium", open_ratio=4.0)
    train = DATASETS.build({"type": "subset", "args": args}, "data_loader", split="train")
    rest = [n - h for n, h in zip(TINY_COUNTS, [5, 5, 5, 5, 4, 3, 2, 2, 1, 1])]
    closed = [rest[c] for c in MEDIUM]  # [22, 17, 13, 10, 8] -> 70 in-group images, floor(70 / 4) = 17 others
    assert train.num_classes == 6 and train.cls_num_list == closed + [17]
    # without files: the registered CIFAR-10 profile (5000 per class, imb 0.1), thresholds 2000 / 1000
    full = lt_class_counts(5000, 10, 0.1)
    info = subset_info({**args, "many_threshold": 2000, "few_threshold": 1000})
    medium = [n - 5 for n in full if 1000 <= n <= 2000]
    assert info["num_classes"] == len(medium) + 1 and info["cls_num_list"] == medium + [sum(medium) // 4]
    val = DATASETS.build({"type": "subset", "args": args}, "data_loader", split="val")
    assert val.cls_num_list == [5, 4, 3, 2, 2, 4]  # held-out images of the group + floor(16 / 4)
    test = DATASETS.build({"type": "subset", "args": args}, "data_loader", split="test")
    assert test.cls_num_list == [20] * 5 + [100]  # test_open_ratio 1: as many others as in-group images
    plain_val = DATASETS.build({"type": "subset", "args": subset_args(cifar10_dir)}, "data_loader", split="val")
    assert plain_val.num_classes == 10 and plain_val.cls_num_list == [5, 5, 5, 5, 4, 3, 2, 2, 1, 1]


def test_calibration_module_fused_prediction_by_hand():
    calib = ExpertCalibration([[0, 2], [1]], num_classes=3)  # expert A: classes 0, 2 (+ other); B: class 1 (+ other)
    calib.set_open_ratios([3.0, 1.0])  # "other" shifts log(2) and log(1) = 0
    with torch.no_grad():
        calib.temperature[0].copy_(torch.tensor([1.0, 2.0, 0.5]))
        calib.bias[0].copy_(torch.tensor([0.0, 0.5, 0.0]))
        calib.temperature[1].copy_(torch.tensor([1.5, 1.0]))
        calib.bias[1].copy_(torch.tensor([-1.0, 0.0]))
    z_a, z_b = [1.0, 0.0, 2.0], [0.5, -0.5]

    def softmax(values):
        exps = [math.exp(v) for v in values]
        return [e / sum(exps) for e in exps]

    q_a = softmax([1.0 * 1.0 + 0.0, 2.0 * 0.0 + 0.5, 0.5 * (2.0 + math.log(2.0)) + 0.0])
    q_b = softmax([1.5 * 0.5 - 1.0, 1.0 * -0.5 + 0.0])
    unnormalised = [q_a[0], q_b[0], q_a[1]]  # class 0 <- A[0], class 1 <- B[0], class 2 <- A[1]; "other" dropped
    expected = [v / sum(unnormalised) for v in unnormalised]
    fused = calib([torch.tensor([z_a]), torch.tensor([z_b])]).exp()[0]
    assert fused.tolist() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="exactly once"):
        ExpertCalibration([[0, 1], [1]], num_classes=3)


@pytest.fixture(scope="module")
def cbe_runs(fmnist_dir, tmp_path_factory):
    """The shipped Fashion-MNIST CBE configs, shrunk to the tiny fixture: generalist -> 3 experts -> calibration."""
    save_dir = tmp_path_factory.mktemp("cbe")
    data = ["--set", f"data_loader.args.base.args.data_dir={fmnist_dir}", "--set", "data_loader.args.base.args.imb_factor=0.1",
            "--set", "data_loader.args.many_threshold=30", "--set", "data_loader.args.few_threshold=10",
            "--set", "data_loader.args.holdout_max_per_class=5", "--set", "evaluation.many_threshold=30",
            "--set", "evaluation.few_threshold=10", "--save_dir", str(save_dir), "--epochs", "1", "-d", "cpu", "--quiet"]
    train = data + ["--limit_batches", "2", "--batch_size", "32", "--set", "trainer.tensorboard=false"]
    assert train_main(["-c", str(ROOT / "configs/fmnist_ir100/cbe_generalist.json"), *train,
                       "--name", "fmnist_ir100_cbe_generalist"]) == 0
    generalist = sorted(save_dir.glob("fmnist_ir100_cbe_generalist/seed*/last.pth"))[-1]
    experts = []
    for group in ("many", "medium", "few"):
        assert train_main(["-c", str(ROOT / f"configs/fmnist_ir100/cbe_{group}.json"), *train,
                           "--set", f"init_from.checkpoint={generalist}", "--name", f"fmnist_ir100_cbe_{group}"]) == 0
        experts.append(sorted(save_dir.glob(f"fmnist_ir100_cbe_{group}/seed*/last.pth"))[-1])
    calibration = ["-c", str(ROOT / "configs/fmnist_ir100/cbe_calibration.json"), *data, "--epochs", "3",
                   "--set", "arch.args.many_threshold=30", "--set", "arch.args.few_threshold=10",
                   "--name", "fmnist_ir100_cbe_calibration"]
    assert calibrate(calibration, experts) == 0
    final = sorted(save_dir.glob("fmnist_ir100_cbe_calibration/seed*/last.pth"))[-1]
    return generalist, experts, final, calibration


def test_cbe_experts_have_group_outputs_and_follow_their_freeze_lists(cbe_runs):
    generalist, experts, _, _ = cbe_runs
    general = load_checkpoint(generalist)["model"]
    many, medium, few = (load_checkpoint(p) for p in experts)
    assert [len(s["cls_num_list"]) for s in (many, medium, few)] == [4, 6, 3]  # k + 1 ("other") outputs
    assert many["cls_num_list"][-1] > 0 and few["model"]["head.weight"].shape[1] == 3
    assert not torch.equal(many["model"]["trunk.0.conv.weight"], general["trunk.0.conv.weight"])  # all layers learn
    assert torch.equal(medium["model"]["branch.0.0.conv1.weight"], general["branch.0.0.conv1.weight"])
    assert not torch.equal(medium["model"]["branch.1.0.conv1.weight"], general["branch.1.0.conv1.weight"])
    assert all(torch.equal(few["model"][k], general[k]) for k in general if not k.startswith("head."))


def test_cbe_calibrated_model_is_evaluated_like_any_checkpoint(cbe_runs, tmp_path):
    _, experts, final, _ = cbe_runs
    state = load_checkpoint(final)
    assert state["cls_num_list"] == TINY_COUNTS  # full training counts -> the usual shot groups
    for e, path in enumerate(experts):
        weights = load_checkpoint(path)["model"]
        assert all(torch.equal(state["model"][f"experts.{e}.{k}"], v) for k, v in weights.items())
    shifts = state["model"]["calibration.other_shift"].tolist()
    assert shifts == pytest.approx([math.log(17 / 2)] * 3)  # open_ratio 16 for every expert
    assert uniform_main(["-r", str(final), "-d", "cpu"]) == 0
    assert priors_main(["forward5", "uniform"], ["-r", str(final), "-d", "cpu", "--posthoc_bias_correction", "estimate",
                                                  "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["posthoc"] for r in rows] == ["none", "none", "estimate", "estimate"] and rows[-1]["prior_tv"]


def test_cbe_calibration_rejects_experts_in_the_wrong_order(cbe_runs, capsys):
    _, experts, _, calibration = cbe_runs
    assert calibrate(calibration, [experts[1], experts[0], experts[2]]) == 2
    assert "'medium' expert but arch.args.groups expects 'many'" in capsys.readouterr().err


def test_cbe_calibration_stage_resumes_exactly_after_ctrl_c(cbe_runs, tmp_path):
    """The calibration stage saves and resumes through the one checkpoint writer, like SGD training."""
    _, experts, final, calibration = cbe_runs
    args = build_parser().parse_args([*calibration, "--save_dir", str(tmp_path), "--set",
                                      "ensemble.checkpoints=" + json.dumps([str(p) for p in experts])])
    config, _ = config_for_run(load_config(args.config), None, overrides_from_args(args))
    stop_after_first = [lambda stage, epoch, step: signal.raise_signal(signal.SIGINT) if epoch == 1 else None]
    interrupted = train(config, "cpu", quiet=True, callbacks=stop_after_first)
    assert interrupted.interrupted and load_checkpoint(interrupted.checkpoint)["epoch"] == 1
    resumed = train(config, "cpu", resume=interrupted.checkpoint, resume_state=load_checkpoint(interrupted.checkpoint),
                    quiet=True)
    assert not resumed.interrupted
    done, reference = load_checkpoint(resumed.checkpoint), load_checkpoint(final)
    assert done["epoch"] == reference["epoch"] == 3
    for key, value in reference["model"].items():
        assert torch.equal(done["model"][key], value), key
