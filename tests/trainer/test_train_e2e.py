"""End to end on tiny data in the real formats: train -> checkpoints -> test / test_all -> tables; exact resume."""
import csv
import json

import pytest
import torch

from conftest import tiny_config, train_with_interrupt, write_config
from longtail.cli.train import main as train_main
from longtail.cli.evaluate import priors_main, uniform_main
from longtail.core.optim import warmup_step_factor
from longtail.utils.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


def run_dirs(save_dir):
    return sorted(p for p in (save_dir / "tiny_balpoe").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def trained(cifar10_dir, tmp_path_factory):
    """Two 2-epoch runs (seeds 1 and 2) of the tiny BalPoE config."""
    save_dir = tmp_path_factory.mktemp("saved")
    config = write_config(save_dir / "tiny.json", tiny_config(cifar10_dir, save_dir))
    for seed in (1, 2):
        assert train_main(["-c", str(config), "--seed", str(seed), "-d", "cpu", "--quiet"]) == 0
    return save_dir


def test_run_directory_layout(trained):
    dirs = run_dirs(trained)
    assert [d.name.split("-")[0] for d in dirs] == ["seed1", "seed2"]
    files = {p.name for p in dirs[0].iterdir()}
    assert {"config.json", "last.pth", "checkpoint-epoch1.pth", "checkpoint-epoch2.pth", "train.log", "history.csv"} <= files
    saved = json.loads((dirs[0] / "config.json").read_text())
    assert saved["loss"]["args"]["tau_list"] == [0.0, 1.0, 2.0] and saved["seed"] == 1
    state = load_checkpoint(dirs[0] / "last.pth")
    assert state["epoch"] == 2 and state["step"] == 0 and state["config"]["name"] == "tiny_balpoe"
    assert state["lr_scheduler"]["last_epoch"] == 2 and "torch" in state["rng"]
    log = (dirs[0] / "train.log").read_text()
    assert "epoch 2/2" in log and "img/s" in log and "val" in log


def test_test_py_single_and_multi(trained, tmp_path, capsys):
    dirs = run_dirs(trained)
    assert uniform_main(["-r", str(dirs[0] / "last.pth"), "-d", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ece" in out and "expert2" in out and "seed1" in out
    assert uniform_main(["-r", str(trained / "tiny_balpoe" / "seed*" / "last.pth"), "-d", "cpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mean" in out and "std" in out
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["seed"] for r in rows] == ["1", "2"] and all(r["prior"] == "uniform" for r in rows)
    mean_row = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| mean")][0]
    expected = (float(rows[0]["all"]) + float(rows[1]["all"])) / 2
    assert f"{expected:.2f}" in mean_row


def test_test_all_tables_csv_and_plot(trained, tmp_path, capsys):
    dirs = run_dirs(trained)
    code = priors_main(["forward5", "uniform", "backward5"],
                         ["-r", str(dirs[0]), str(dirs[1]), "-d", "cpu", "--posthoc_bias_correction", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "with posthoc bias correction (true test prior)" in out
    assert "tiny_balpoe + oracle" in out and "±" in out  # rows: the method and its corrected version, over 2 seeds
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 2 * 3 * 2  # checkpoints x priors x (plain, corrected)
    assert {"checkpoint", "seed", "prior", "many", "medium", "few", "all"} <= set(rows[0])
    uniform = [r for r in rows if r["prior"] == "uniform"]
    assert len({r["all"] for r in uniform if r["seed"] == "1"}) == 1  # correction is a no-op on the uniform prior
    tex = (tmp_path / "results.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and r"\multicolumn{4}{c}{forward5}" in tex
    assert (tmp_path / "accuracy_vs_prior.png").stat().st_size > 1000


def test_test_all_console_shows_all_by_default_and_the_groups_on_request(trained, tmp_path, capsys):
    dirs = run_dirs(trained)
    argv = ["-r", str(dirs[0]), str(dirs[1]), "-d", "cpu", "--out", str(tmp_path)]
    assert priors_main(["forward5", "uniform", "backward5"], argv) == 0
    narrow = capsys.readouterr().out
    assert "many" not in narrow and max(len(line) for line in narrow.splitlines()) < 120
    assert "many" in (tmp_path / "results.md").read_text()  # the files keep every group
    assert priors_main(["forward5", "uniform", "backward5"], [*argv, "--groups"]) == 0
    assert "many" in capsys.readouterr().out


def test_evaluation_matches_training_validation(trained, capsys):
    """test.py on the last checkpoint reproduces the accuracy logged after the last epoch."""
    run = run_dirs(trained)[0]
    history = list(csv.DictReader((run / "history.csv").open()))
    assert uniform_main(["-r", str(run / "last.pth"), "-d", "cpu"]) == 0
    line = capsys.readouterr().out.splitlines()[-1].split()
    assert float(line[4]) == pytest.approx(float(history[-1]["val_accuracy"]), abs=1e-3)


def _final_weights(path):
    return load_checkpoint(path)["model"]


def test_interrupt_then_resume_equals_uninterrupted(cifar10_dir, tmp_path):
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path / "a", epochs=3))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet"]) == 0
    reference = run_dirs(tmp_path / "a")[0] / "last.pth"

    assert train_with_interrupt(["-c", str(config), "-d", "cpu", "--quiet", "--save_dir", str(tmp_path / "b")], (2, 1)) == 130
    interrupted = run_dirs(tmp_path / "b")[0] / "last.pth"
    state = load_checkpoint(interrupted)
    assert (state["epoch"], state["step"]) == (1, 2)  # one full epoch + 2 batches of epoch 2
    assert train_main(["-r", str(interrupted), "-d", "cpu", "--quiet"]) == 0
    resumed, expected = _final_weights(interrupted), _final_weights(reference)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), key


def test_a_resumed_smoke_run_keeps_its_flags_and_reports_whole_epochs(cifar10_dir, tmp_path):
    """Issue 22: `-r last.pth` after Ctrl-C on a --limit_batches run continues with the same limit, and the resumed
    epoch's history row covers the whole epoch (identical to the uninterrupted run's)."""
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path / "a", epochs=2))
    smoke = ["-d", "cpu", "--quiet", "--limit_batches", "3", "--limit_val_batches", "1"]
    assert train_main(["-c", str(config), *smoke]) == 0
    reference = run_dirs(tmp_path / "a")[0] / "last.pth"
    assert train_with_interrupt(["-c", str(config), *smoke, "--save_dir", str(tmp_path / "b")], (1, 1)) == 130
    interrupted = run_dirs(tmp_path / "b")[0] / "last.pth"
    assert load_checkpoint(interrupted)["run_options"]["limit_batches"] == 3
    assert train_main(["-r", str(interrupted), "-d", "cpu", "--quiet"]) == 0  # no flags repeated
    resumed, expected = load_checkpoint(interrupted), load_checkpoint(reference)
    assert all(torch.equal(resumed["model"][k], v) for k, v in expected["model"].items())
    for key in ("loss", "accuracy", "loss_expert0"):
        assert [row[key] for row in resumed["history"]] == [row[key] for row in expected["history"]], key
    history = (interrupted.parent / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "smoke run: at most 3 training" in (interrupted.parent / "train.log").read_text()


def test_train_log_shows_progress_within_the_first_epoch(cifar10_dir, tmp_path):
    """A quiet run writes a progress line to train.log at its first metric read, long before the epoch ends."""
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path, epochs=1,
                                                           **{"trainer.log_interval": 1}))
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "3"]) == 0
    log = (run_dirs(tmp_path)[0] / "train.log").read_text().splitlines()
    first_progress = next(i for i, line in enumerate(log) if " step 1/3 | loss " in line)
    assert first_progress < next(i for i, line in enumerate(log) if "epoch 1/1 |" in line)


def test_same_seed_same_result_different_seed_differs(cifar10_dir, tmp_path):
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path, epochs=1))
    for _ in range(2):
        assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--seed", "3"]) == 0
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--seed", "4"]) == 0
    a, b, c = [_final_weights(d / "last.pth") for d in run_dirs(tmp_path)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_dry_run_prints_groups_params_macs(cifar10_dir, tmp_path, capsys):
    config = write_config(tmp_path / "c.json", tiny_config(cifar10_dir, tmp_path))
    assert train_main(["-c", str(config), "--dry_run", "-d", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "many" in out and "few" in out and "parameters:" in out and "MACs/image" in out
    assert not (tmp_path / "tiny_balpoe").exists()  # nothing written


def test_reference_custom_lr_values():
    lrs = [0.1 * warmup_step_factor(t - 1, 160, 180, 0.1, 5) for t in (1, 2, 3, 4, 5, 6, 160, 161, 180, 181, 200)]
    assert lrs == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_schedule_matches_torch_cosine_annealing():
    from longtail.core.optim import cosine

    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.SGD(params, lr=0.2)
    ref = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched, ref_sched = cosine(ours, T_max=10), torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=10)
    for _ in range(10):
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], abs=1e-12)
        ours.step(), ref.step()
        sched.step(), ref_sched.step()
