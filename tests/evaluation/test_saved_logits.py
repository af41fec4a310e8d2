"""Logits files (evaluation/saved_logits.py): round trip, foreign files, errors, and the equality of evaluating
saved logits with evaluating the checkpoint on the fly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from longtail.cli.evaluate import priors_main
from longtail.data_loader.profiles import lt_class_counts
from longtail.evaluation.saved_logits import LogitSet, load_logits, save_logits
from longtail.evaluation.shift import ShiftOptions, evaluate_logit_sets
from longtail.utils.errors import DataError

PROTOCOLS = ["fixed", "dirichlet", "dirichlet_sym", "tweak_one", "severity"]


def synthetic_set(seed: int = 0, views: bool = True) -> LogitSet:
    """A 3-expert, 10-class logit set on a balanced test set of 30 per class, with held-out data and views."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.arange(10).repeat_interleave(30)
    logits = torch.randn(300, 3, 10, generator=gen) + 3 * torch.nn.functional.one_hot(targets, 10)[:, None]
    held_targets = torch.arange(10).repeat_interleave(8)
    held = torch.randn(80, 3, 10, generator=gen) + 2 * torch.nn.functional.one_hot(held_targets, 10)[:, None]
    view_logits = logits[None, None].repeat(2, 2, 1, 1, 1) + 0.5 * torch.randn(2, 2, 300, 3, 10, generator=gen)
    return LogitSet(logits, targets, lt_class_counts(500, 10, 0.01), "toy", seed, f"/runs/toy/seed{seed}/last.pth",
                    {"many_threshold": 100, "few_threshold": 20, "source_prior": "uniform",
                     "test_time": {"sade": {"epochs": 2, "batch_size": 64}}},
                    {"data": "toy"}, {}, 0, held, held_targets, view_logits if views else None,
                    "sade" if views else "", label=f"seed{seed}")


def evaluate(sets, aggregation: str = "mean", modes=("none", "oracle", "bbse", "rlls", "bcts_em", "ts")):
    shift = ShiftOptions(protocols=PROTOCOLS, settings={
        "fixed": {"priors": ["forward50", "uniform", "backward50"]}, "dirichlet": {"trials": 1},
        "dirichlet_sym": {"trials": 1, "alphas": [1.0]}, "tweak_one": {"classes": 1, "rhos": [0.5]},
        "severity": {"ratios": [50]}})
    return evaluate_logit_sets(sets, shift, list(modes), aggregation)


@pytest.mark.parametrize("aggregation", ["mean", "sade"])
def test_saved_logits_evaluate_exactly_as_in_memory(tmp_path: Path, aggregation: str) -> None:
    """Every protocol, correction and metric from a float32 file equals the in-memory evaluation exactly."""
    sets = [synthetic_set(0), synthetic_set(1)]
    loaded = []
    for logit_set in sets:
        path = save_logits(logit_set, tmp_path / f"{logit_set.seed}.safetensors")
        again = load_logits(path)
        again.label = logit_set.label
        loaded.append(again)
    assert torch.equal(loaded[0].expert_logits, sets[0].expert_logits)
    assert torch.equal(loaded[0].view_logits, sets[0].view_logits) and loaded[0].evaluation == sets[0].evaluation
    # with an aggregation every test set has its own ensemble (and calibration fit): fewer corrections keep it short
    modes = ("none", "oracle", "bbse", "ts") if aggregation == "sade" else ("none", "oracle", "bbse", "rlls",
                                                                            "bcts_em", "ts")
    expected, actual = evaluate(sets, aggregation, modes), evaluate(loaded, aggregation, modes)
    assert len(expected) == 2 * (3 + 3 + 1 + 1 + 3) * len(modes)
    pd.testing.assert_frame_equal(expected, actual, check_exact=True)
    if aggregation == "sade":
        assert not np.allclose(expected["w0"], 1 / 3)  # the weights were learned from the saved views


def test_float16_files_are_half_the_size_and_close(tmp_path: Path) -> None:
    logit_set = synthetic_set(views=False)
    full = save_logits(logit_set, tmp_path / "full.safetensors")
    half = save_logits(logit_set, tmp_path / "half.safetensors", torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back = load_logits(half)
    assert back.expert_logits.dtype == torch.float32
    assert torch.allclose(back.expert_logits, logit_set.expert_logits, atol=5e-3)


def test_a_foreign_file_needs_only_logits_labels_and_counts(tmp_path: Path) -> None:
    """An .npz written by another code base with the three required arrays (single-model (N, C) logits) is
    evaluated with the documented defaults; metadata, when present, is one JSON string."""
    gen = np.random.RandomState(0)
    targets = np.repeat(np.arange(10), 20)
    logits = gen.randn(200, 10).astype(np.float32) + 4 * np.eye(10, dtype=np.float32)[targets]
    np.savez(tmp_path / "other.npz", **{"test.logits": logits, "test.targets": targets,
                                        "train_counts": np.array(lt_class_counts(100, 10, 0.1))})
    foreign = load_logits(tmp_path / "other.npz")
    assert foreign.name == "other" and foreign.expert_logits.shape == (200, 1, 10) and foreign.heldout_logits is None
    rows = evaluate_logit_sets([foreign], ShiftOptions(protocols=["fixed", "severity"]), ["none", "oracle"])
    assert set(rows["prior"]) >= {"forward50", "uniform", "backward50", "forward100", "backward100"}
    np.savez(tmp_path / "named.npz", **{"test.logits": logits, "test.targets": targets,
                                        "train_counts": np.array(lt_class_counts(100, 10, 0.1)),
                                        "metadata": json.dumps({"name": "their_model", "seed": 4})})
    named = load_logits(tmp_path / "named.npz")
    assert (named.name, named.seed) == ("their_model", 4)


def test_bad_files_give_one_clear_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "partial.npz", **{"test.logits": np.zeros((4, 3), np.float32)})
    with pytest.raises(DataError, match="missing tensor.*test.targets.*train_counts"):
        load_logits(tmp_path / "partial.npz")
    np.savez(tmp_path / "shape.npz", **{"test.logits": np.zeros((4, 3), np.float32), "test.targets": np.zeros(5, int),
                                        "train_counts": np.ones(3, int)})
    with pytest.raises(DataError, match=r"\(N, E, C\) = \(5, E, 3\)"):
        load_logits(tmp_path / "shape.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataError, match="not a readable logits file"):
        load_logits(tmp_path / "junk.safetensors")
    with pytest.raises(DataError, match="not found"):
        load_logits(tmp_path / "missing.safetensors")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*differs from the official release")
def test_checkpoint_and_its_saved_logits_give_the_same_results(fmnist_dir, tmp_path: Path) -> None:
    """test_all_cifar.py on a checkpoint (with --save_logits) and on the written file (--logits) give identical
    result tables, test-time aggregation and estimators included; the fixed priors equal the classic evaluation."""
    from longtail.cli.train import main as train_main

    config = Path(__file__).resolve().parents[2] / "configs/fmnist_ir100/dirmixe.json"
    assert train_main(["-c", str(config), "--data_dir", str(fmnist_dir), "--save_dir", str(tmp_path), "--epochs", "1",
                       "--limit_batches", "2", "--batch_size", "32", "-d", "cpu", "--quiet", "--name", "tiny",
                       "--set", "data_loader.args.imb_factor=0.1", "--set", "data_loader.args.holdout_fraction=0.2",
                       "--set", "evaluation.test_time.sade.epochs=2"]) == 0
    checkpoint = str(sorted(tmp_path.glob("tiny/seed*/last.pth"))[-1])
    common = ["-d", "cpu", "--protocol", "fixed,dirichlet,severity", "--protocol_set", "dirichlet.trials=2",
              "--estimators", "em,bbse,rlls,bcts_em", "--aggregation", "sade"]
    assert priors_main([], ["-r", checkpoint, *common, "--save_logits", str(tmp_path / "logits"),
                            "--out", str(tmp_path / "live")]) == 0
    files = sorted((tmp_path / "logits").glob("*.safetensors"))
    assert len(files) == 1
    assert load_logits(files[0]).heldout_logits is not None and load_logits(files[0]).views_of == "sade"
    assert priors_main([], ["--logits", str(files[0]), *common, "--out", str(tmp_path / "saved")]) == 0
    live = pd.read_csv(tmp_path / "live" / "results.csv")
    saved = pd.read_csv(tmp_path / "saved" / "results.csv")
    pd.testing.assert_frame_equal(live, saved, check_exact=True)
    assert {"severity.png", "summary.csv", "results.md"} <= {p.name for p in (tmp_path / "saved").iterdir()}
    # the classic evaluation of the same priors with the plain mean: the same accuracies as the new path
    assert priors_main(["forward5", "uniform", "backward5"], ["-r", checkpoint, "-d", "cpu",
                                                              "--out", str(tmp_path / "classic")]) == 0
    classic = pd.read_csv(tmp_path / "classic" / "results.csv").set_index("prior")
    assert priors_main(["forward5", "uniform", "backward5"], ["--logits", str(files[0]), "--out", str(tmp_path / "new"),
                                                              "--protocol", "fixed", "--estimators", "em"]) == 0
    new = pd.read_csv(tmp_path / "new" / "results.csv")
    new = new[new["posthoc"] == "none"].set_index("prior")
    for column in ("all", "many", "medium", "few"):  # (NaN where a shot group has no class: equal too)
        np.testing.assert_array_equal(new.loc[classic.index, column].to_numpy(), classic[column].to_numpy())
