"""CPU threads: chosen from the usable cores and the machine's load, overridable, printed at the start of a run."""
import os

import pytest
import torch

from longtail.utils import device as device_module
from longtail.utils.device import choose_threads
from longtail.utils.errors import ConfigError


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(device_module, "usable_cpus", lambda: 4)


@pytest.mark.parametrize("load, expected", [(0.2, 4), (1.7, 3), (3.0, 1), (9.0, 1)])
def test_threads_leave_the_busy_cores_to_other_processes(four_cores, monkeypatch, load, expected):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert choose_threads()[0] == expected


def test_flag_and_environment_win(four_cores, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    assert choose_threads(2) == (2, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads() == (3, "OMP_NUM_THREADS")
    with pytest.raises(ConfigError, match="--threads"):
        choose_threads(0)


def test_cgroup_quota_caps_the_cores(monkeypatch, tmp_path):
    real_open = open
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # 1.5 CPUs
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(quota if path == "/sys/fs/cgroup/cpu.max"
                                                                       else path, *a, **k))
    assert device_module.usable_cpus() == 1


def test_a_run_prints_its_thread_count(tmp_path, cifar10_dir):
    from conftest import tiny_config
    from longtail.core.build import resolve
    from longtail.trainer.run import train

    before = torch.get_num_threads()
    try:
        result = train(resolve(tiny_config(cifar10_dir, tmp_path, epochs=1)), "cpu", quiet=True, limit_batches=1,
                       limit_val_batches=1, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "CPU threads: 1 (--threads" in (result.run_dir / "train.log").read_text()


def test_evaluation_commands_take_threads_like_train_py(capsys):
    """test.py / test_all_*.py --threads N sets torch's intra-op threads to N and says so on stderr."""
    from longtail.cli.evaluate import build_parser, options_from_args
    before = torch.get_num_threads()
    try:
        args = build_parser("evaluate", with_priors=True).parse_args(["-r", "x.pth", "--threads", "1"])
        options_from_args(args, "test_all")
        assert torch.get_num_threads() == 1
        assert "CPU threads: 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)
