"""Bad input to the real entry points: one 'error:' line naming the problem and the fix, no traceback, no leftovers."""
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_config, write_fmnist
from longtail.cli.evaluate import priors_main, uniform_main
from longtail.cli.train import main as train_main
from longtail.utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def run(main, argv, capsys):
    """(exit code, stderr) of an entry point; argparse errors exit through SystemExit like the real scripts."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def tiny(cifar10_dir, tmp_path):
    """A tiny config file and its save folder."""
    config = tiny_config(cifar10_dir, tmp_path / "saved", epochs=1)
    return write_config(tmp_path / "tiny.json", config), tmp_path / "saved"


# ------------------------------------------------------------------------------------------------ former tracebacks
def test_config_file_holding_a_list(tmp_path, capsys):
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]")
    code, err = run(train_main, ["-c", str(path)], capsys)
    assert code == 2 and "list.json must hold a JSON object" in err


@pytest.mark.parametrize("damage", ["truncate", "random"])
def test_broken_cifar_pickle_names_the_file(cifar10_dir, tmp_path, capsys, damage):
    data = tmp_path / "cifar"
    shutil.copytree(cifar10_dir, data)
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    content = batch.read_bytes()
    batch.write_bytes(content[: len(content) // 2] if damage == "truncate" else bytes(range(256)) * 40)
    config = write_config(tmp_path / "c.json", tiny_config(data, tmp_path / "saved", epochs=1))
    code, err = run(train_main, ["-c", str(config), "-d", "cpu", "--quiet"], capsys)
    assert code == 2 and "data_batch_1 is not a readable CIFAR python pickle" in err and "re-download" in err
    assert not (tmp_path / "saved").exists()  # nothing was created for a run that could not start


def test_truncated_fashion_mnist_gz(tmp_path, capsys):
    data = write_fmnist(tmp_path / "fmnist", 60, 20)
    gz = data / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:200])
    config = write_config(tmp_path / "c.json", tiny_config(data, tmp_path / "saved", dataset="fmnist_lt", epochs=1))
    code, err = run(train_main, ["-c", str(config), "-d", "cpu", "--quiet"], capsys)
    assert code == 2 and "train-images-idx3-ubyte.gz is not a complete gzip file" in err


@pytest.mark.parametrize("main", [train_main, uniform_main], ids=["train", "test"])
def test_resume_from_random_bytes(tmp_path, capsys, main):
    path = tmp_path / "last.pth"
    path.write_bytes(bytes(range(256)) * 64)
    code, err = run(main, ["-r", str(path), "-d", "cpu"], capsys)
    assert code == 2 and "last.pth is not a readable checkpoint" in err


@pytest.mark.parametrize("device", ["mps", "meta", "tpu", "cuda:7"])
def test_unsupported_devices(tiny, capsys, device):
    code, err = run(train_main, ["-c", str(tiny[0]), "-d", device, "--dry_run"], capsys)
    assert code == 2 and f"{device!r}" in err and ("-d cpu" in err or "use cpu, cuda" in err)


def test_save_dir_that_is_a_file(tiny, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run(train_main, ["-c", str(tiny[0]), "-d", "cpu", "--save_dir", str(blocker / "runs")], capsys)
    assert code == 2 and "is a file, not a folder" in err and "--save_dir" in err


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny, capsys, monkeypatch):
    """The second epoch's checkpoint write fails like a full disk; last.pth of epoch 1 stays loadable."""
    import longtail.utils.checkpoint as checkpoint_module

    config, save_dir = tiny
    real_save, writes = torch.save, []

    def failing_save(obj, handle, *args, **kwargs):
        writes.append(1)
        if len(writes) > 2:  # epoch 1: last.pth and checkpoint-epoch1.pth; epoch 2's first write fails
            handle.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    code, err = run(train_main, ["-c", str(config), "-d", "cpu", "--quiet", "--epochs", "2", "--name", "full"], capsys)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert code == 2 and "could not write" in err and "the previous last.pth (epoch 1) is intact" in err
    run_dir = next((save_dir / "full").iterdir())
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 1
    assert not list(run_dir.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ formerly accepted
@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--epochs", "-3"], ["--num_experts", "-1"],
                                   ["--limit_batches", "-2"], ["--batch_size", "0"]])
def test_non_positive_counts_are_rejected_by_the_parser(tiny, capsys, flags):
    code, err = run(train_main, ["-c", str(tiny[0]), *flags], capsys)
    assert code == 2 and "expected a positive integer" in err


@pytest.mark.parametrize("flags,words", [
    (["--lr", "nan"], "'optimizer.args.lr' is nan"),
    (["--tau_list", "0,nan,2"], "'loss.args.tau_list[1]' is nan"),
    (["--set", "trainer.epochs=0"], "'trainer.epochs' must be >= 1"),
    (["--set", "combiner.args.alpha=-0.2"], "combiner.args.alpha is a Beta distribution parameter"),
    (["--set", "data_loader.args.imb_factor=0"], "must be in (0, 1]"),
    (["--set", "data_loader.args.imb_factor=2.0"], "must be in (0, 1]"),
    (["--tau_list", "0,,1"], "item 2 is empty"),
    (["--set", "loss.type=foo_loss"], "unknown loss 'foo_loss'"),
    (["--set", "combiner.args.alpah=0.2"], "unknown key 'combiner.args.alpah'"),
])
def test_wrong_values_fail_the_dry_run(tiny, capsys, flags, words):
    code, err = run(train_main, ["-c", str(tiny[0]), "-d", "cpu", "--dry_run", *flags], capsys)
    assert code == 2 and words in err, err


@pytest.mark.parametrize("config", ["cifar100_ir100/ride_distill.json", "cifar100_ir100/ride_router.json",
                                    "cifar100_ir100/crt.json", "cifar100_ir100/lws.json", "cifar100_ir100/tau_norm.json",
                                    "cifar100_ir100/cbe_many.json", "cifar100_ir100/cbe_calibration.json"])
def test_dry_run_checks_the_checkpoints_a_stage_needs(config, capsys):
    code, err = run(train_main, ["-c", str(CONFIGS / config), "-d", "cpu", "--dry_run"], capsys)
    assert code == 2 and "not found" in err and ("SEED-TIME" in err or "YYYYmmdd" in err)


def test_dry_run_checks_that_an_earlier_stage_fits(tiny, cifar10_dir, tmp_path, capsys):
    """A stage-1 checkpoint of another architecture is an error of the dry run, before anything is written."""
    assert train_main(["-c", str(tiny[0]), "-d", "cpu", "--quiet", "--limit_batches", "1", "--name", "stage1"]) == 0
    stage1 = next((tiny[1] / "stage1").glob("seed*/last.pth"))
    config = tiny_config(cifar10_dir, tmp_path / "other", epochs=1, init_from={"checkpoint": str(stage1)},
                         **{"arch.args.stem_width": 8})
    code, err = run(train_main, ["-c", str(write_config(tmp_path / "s2.json", config)), "-d", "cpu", "--dry_run"], capsys)
    assert code == 2 and "shapes differ" in err
    assert not (tmp_path / "other").exists()


def test_test_all_checks_prior_names_first_and_accepts_commas(tiny, capsys):
    test_all = lambda argv: priors_main(["uniform"], argv)  # noqa: E731
    code, err = run(test_all, ["-r", "nowhere", "-d", "cpu", "--priors", "forward50", "sideways7"], capsys)
    assert code == 2 and "unknown test prior 'sideways7'" in err  # before the (missing) checkpoint is looked at
    assert train_main(["-c", str(tiny[0]), "-d", "cpu", "--quiet", "--limit_batches", "1", "--name", "p"]) == 0
    run_dir = next((tiny[1] / "p").glob("seed*"))
    code, _ = run(test_all, ["-r", str(run_dir), "-d", "cpu", "--priors", "uniform,backward5", "--out",
                             str(run_dir / "res")], capsys)
    assert code == 0
    assert (run_dir / "res" / "results.csv").read_text().count("backward5") == 1


def test_resume_removes_temp_files_of_an_interrupted_write(tiny, capsys):
    config, save_dir = tiny
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "1", "--name", "kill"]) == 0
    run_dir = next((save_dir / "kill").glob("seed*"))
    stale = run_dir / ".last.pth.k2j4h.tmp"  # what a SIGKILL during a checkpoint write leaves behind
    stale.write_bytes(b"half a checkpoint")
    state = load_checkpoint(run_dir / "last.pth")
    state["epoch"] = 0  # resume the (only) epoch again
    torch.save(state, run_dir / "last.pth")
    assert train_main(["-r", str(run_dir / "last.pth"), "-d", "cpu", "--quiet", "--limit_batches", "1"]) == 0
    assert not stale.exists()
    assert "removed .last.pth.k2j4h.tmp" in (run_dir / "train.log").read_text()


# ------------------------------------------------------------------------------------------------ run ergonomics
def test_overrides_name_the_run_and_name_sets_it(tiny, capsys):
    config, save_dir = tiny
    args = ["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "1", "--limit_val_batches", "1"]
    assert train_main([*args, "--num_experts", "2", "--tau_list", "0,2", "--set", "optimizer.args.lr=0.02",
                       "--seed", "3"]) == 0
    assert [p.name for p in save_dir.iterdir()] == ["tiny_balpoe-num_experts2-tau_list0_2-lr0.02"]
    assert train_main([*args, "--name", "my_run"]) == 0
    assert (save_dir / "my_run").is_dir()


def test_limit_val_batches_caps_validation(tiny, capsys):
    config, save_dir = tiny
    assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "1", "--limit_val_batches", "1",
                       "--name", "v"]) == 0
    state = load_checkpoint(next((save_dir / "v").glob("seed*/last.pth")))
    assert "val_accuracy" in state["history"][-1]  # validation ran, on the first 64 of 200 test images
    assert state["history"][-1]["val_accuracy"] * 64 / 100 == pytest.approx(round(state["history"][-1]["val_accuracy"] * 64 / 100))


def test_per_step_tensorboard_scalars(cifar10_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(cifar10_dir, tmp_path / "saved", epochs=1, **{"trainer.tensorboard": True,
                                                                       "trainer.log_interval": 1})
    assert train_main(["-c", str(write_config(tmp_path / "c.json", config)), "-d", "cpu", "--quiet",
                       "--limit_batches", "3", "--limit_val_batches", "1"]) == 0
    events = EventAccumulator(str(next((tmp_path / "saved").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss_step")]
    assert steps == [1, 2, 3] and len(events.Scalars("train/lr_step")) == 3
    assert "train/loss" in events.Tags()["scalars"]  # the per-epoch scalars are still written


def test_folder_of_seed_runs_evaluates_every_seed(tiny, capsys):
    config, save_dir = tiny
    for seed in (1, 2):
        assert train_main(["-c", str(config), "-d", "cpu", "--quiet", "--limit_batches", "1", "--seed", str(seed),
                           "--limit_val_batches", "1"]) == 0
    code, _ = run(uniform_main, ["-r", str(save_dir / "tiny_balpoe"), "-d", "cpu", "--out", str(save_dir / "res")], capsys)
    assert code == 0
    rows = (save_dir / "res" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and "seed1" in rows[1] and "seed2" in rows[2]


def test_checksum_warning_once_per_file_on_one_line(cifar10_dir, tmp_path, recwarn):
    from longtail.registry import DATASETS

    data = tmp_path / "cifar"
    shutil.copytree(cifar10_dir, data)  # files no earlier test has warned about
    for _ in range(3):
        DATASETS.get("cifar10_lt")("train", str(data), imb_factor=0.1, download=False)
    messages = [str(w.message) for w in recwarn if "differs from the official release" in str(w.message)]
    assert len(messages) == len(set(messages)) == 6  # the five training batches and batches.meta, once each
    assert all(w.lineno == 0 and w.filename.startswith(str(data)) for w in recwarn
               if "differs from the official" in str(w.message))
