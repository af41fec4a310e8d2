"""A real SLURM cluster on this machine (slurmctld + slurmd + munge, tools/slurm_local.py): a 2-seed x 2-stage
Fashion-MNIST sweep goes through sbatch with afterok dependencies, one job is preempted mid-run (SIGUSR2,
submitit's preemption signal) and its requeued run resumes bit-exactly; the sweep's table equals the table of the
same sweep run by the local launcher. A 2-task job trains with DDP from SLURM's rendezvous. Skipped (with the reason)
where the cluster cannot start: not root, or slurm-wlm / munge not installed (.ci/run installs and starts them)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from cluster_helpers import slurm_cluster, wait_until, write_two_stage_sweep  # noqa: F401 (fixture)
from conftest import image_list_config, write_config
from longtail.cli.sweep import main as sweep_main
from longtail.cli.train import main as train_main
from longtail.cluster.jobs import read_record
from longtail.cluster.launchers import read_submissions
from longtail.cluster.status import status_frame
from longtail.cluster.sweep import read_sweep
from longtail.pipeline import SeedState
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.device import usable_cpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # two sweeps and a requeue on 2 shared cores
SWEEP = "two_stage"
VARIANT = "ce_crt"


def run_dir(save_dir: Path, seed: int, stage: str) -> Path | None:
    """The run directory a stage recorded in the sweep's seed state."""
    record = SeedState(save_dir / "sweeps" / SWEEP / VARIANT, seed).stages.get(stage)
    return Path(record["run_dir"]) if record else None


def weights(save_dir: Path, seed: int, stage: str) -> dict[str, torch.Tensor]:
    """The final weights of a stage."""
    return load_checkpoint(run_dir(save_dir, seed, stage) / "last.pth")["model"]


@pytest.fixture(scope="module")
def sweeps(slurm_cluster, fmnist_dir, tmp_path_factory):  # noqa: F811
    """The same sweep run twice: by the local launcher (every job one thread), and through SLURM with seed 1's
    stage 1 preempted once it has trained two epochs."""
    root = tmp_path_factory.mktemp("sweeps")
    sweep_file = write_two_stage_sweep(root / "files", fmnist_dir)
    local, slurm = root / "local", root / "slurm"
    # local: at most usable_cpus jobs at once, so that each gets one thread, as each SLURM job (--cpus-per-task=1)
    assert sweep_main(["run", str(sweep_file), "--save_dir", str(local), "--max_parallel", str(usable_cpus())]) == 0
    assert sweep_main(["run", str(sweep_file), "--save_dir", str(slurm), "--launcher", "slurm"]) == 0
    folder = slurm / "sweeps" / SWEEP
    ids = read_submissions(read_sweep(folder))["jobs"]
    target = f"{VARIANT}/seed1/stage1"

    def trained_two_epochs() -> bool:
        folder_ = run_dir(slurm, 1, "stage1")
        log = folder_ / "train.log" if folder_ else None
        return bool(log and log.is_file() and "epoch 2/" in log.read_text())

    wait_until(trained_two_epochs, 600, "seed 1 stage 1 to train two epochs on the cluster")
    # submitit's preemption signal USR2 (what submitit's SlurmJob._interrupt sends to simulate a preemption). One
    # signal only: scancel retries a signal the controller refuses while the job is being requeued ("try again
    # later") and would then deliver it to the requeued run while it starts. SIGTERM takes the same StopRequest
    # path (tests/cluster/test_sweep.py).
    subprocess.run(["scancel", "--signal=USR2", ids[target]], check=True)

    def finished() -> bool:
        states = status_frame(read_sweep(folder))["state"]
        assert not states.str.startswith(("failed", "cancelled")).any(), status_frame(read_sweep(folder)).to_string()
        return bool((states == "done").all())

    wait_until(finished, 1200, "every SLURM job to finish", interval_s=2)
    assert sweep_main(["status", str(folder)]) == 0  # all done: writes the table
    return {"local": local, "slurm": slurm, "folder": folder, "ids": ids, "target": target}


def test_the_preempted_job_saved_on_the_signal_was_requeued_and_resumed_in_its_run_directory(sweeps):
    log = (run_dir(sweeps["slurm"], 1, "stage1") / "train.log").read_text()
    assert re.search(r"interrupted \((SIGTERM|SIGUSR2)(, SIG(TERM|USR2))?\) at epoch \d+ step", log), log
    assert log.count("run directory:") == 2, "the requeued job continues the same run directory"
    record = read_record(sweeps["folder"], sweeps["target"])
    assert record["state"] == "done" and record["restarts"] == 1 and record["slurm_job_id"] == sweeps["ids"][sweeps["target"]]
    history = load_checkpoint(run_dir(sweeps["slurm"], 1, "stage1") / "last.pth")["history"]
    assert [row["epoch"] for row in history] == list(range(1, 31)), "every epoch once, none repeated or lost"


def test_the_resumed_run_is_bit_exact_with_an_uninterrupted_one(sweeps):
    for seed in (1, 2):
        for stage in ("stage1", "crt"):
            slurm, local = weights(sweeps["slurm"], seed, stage), weights(sweeps["local"], seed, stage)
            assert slurm.keys() == local.keys()
            assert all(torch.equal(slurm[k], local[k]) for k in slurm), f"seed {seed} {stage} differs"


def test_stages_ran_after_the_jobs_they_read_and_linked_them_by_exact_path(sweeps):
    folder, ids = sweeps["folder"], sweeps["ids"]
    stage_keys = [f"{VARIANT}/seed{s}/{st}" for s in (1, 2) for st in ("stage1", "crt")]
    for seed in (1, 2):
        first, second = (read_record(folder, f"{VARIANT}/seed{seed}/{st}") for st in ("stage1", "crt"))
        assert second["started"] >= first["ended"]
        script = (folder / "slurm" / ids[f"{VARIANT}/seed{seed}/crt"] /
                  f"{ids[f'{VARIANT}/seed{seed}/crt']}_submission.sh").read_text()
        assert f"--dependency=afterok:{ids[f'{VARIANT}/seed{seed}/stage1']}" in script
        config = load_checkpoint(run_dir(sweeps["slurm"], seed, "crt") / "last.pth")["config"]
        assert config["init_from"]["checkpoint"] == str(run_dir(sweeps["slurm"], seed, "stage1") / "last.pth")
    evaluation = read_record(folder, f"{VARIANT}/evaluate")
    assert evaluation["started"] >= max(read_record(folder, k)["ended"] for k in stage_keys)


def test_the_sweep_table_is_the_local_launchers_table(sweeps):
    slurm_table = (sweeps["folder"] / "table.md").read_text()
    local_table = (sweeps["local"] / "sweeps" / SWEEP / "table.md").read_text()
    assert slurm_table == local_table
    assert "crt + oracle" in slurm_table and "forward5 all" in slurm_table and "± " in slurm_table
    results = (sweeps["folder"] / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 2 * (1 + 3 * 2), "per seed: the uniform report, and 3 priors x (none, oracle)"


def test_a_two_task_job_trains_with_ddp_from_slurms_rendezvous(slurm_cluster, imagenet_lt_dir, tmp_path):  # noqa: F811
    """2 tasks of one SLURM job (srun) find each other from SLURM's variables and train as `train.py --nproc 2`."""
    config = image_list_config(imagenet_lt_dir, tmp_path, **{"trainer.sync_batchnorm": True, "trainer.val_period": 0,
                                                               "combiner": {"type": "default"}})
    config_file = write_config(tmp_path / "tiny.json", config)
    sweep = {"name": "ddp", "seeds": [1], "runs": [{"config": str(config_file)}], "evaluate": False,
             "train": {"device": "cpu", "limit_batches": 2}, "resources": {"tasks_per_node": 2, "cpus_per_task": 1}}
    (tmp_path / "ddp.json").write_text(json.dumps(sweep))
    assert sweep_main(["run", str(tmp_path / "ddp.json"), "--save_dir", str(tmp_path / "slurm"), "--launcher", "slurm"]) == 0
    folder = tmp_path / "slurm" / "sweeps" / "ddp"
    wait_until(lambda: read_record(folder, "tiny/seed1/train").get("state") in ("done", "failed"), 600,
               "the 2-task job", interval_s=1)
    assert read_record(folder, "tiny/seed1/train")["state"] == "done", status_frame(read_sweep(folder)).to_string()
    state = SeedState(folder / "tiny", 1).stages["train"]
    log = (Path(state["run_dir"]) / "train.log").read_text()
    assert "batch: 2 processes x 4 images = 8 images per update" in log
    assert train_main(["-c", str(config_file), "-d", "cpu", "--quiet", "--limit_batches", "2", "--threads", "1",
                       "--nproc", "2", "--save_dir", str(tmp_path / "local")]) == 0
    local = load_checkpoint(next((tmp_path / "local").rglob("last.pth")))["model"]
    slurm = load_checkpoint(Path(state["run_dir"]) / "last.pth")["model"]
    assert all(torch.equal(local[k], slurm[k]) for k in local)
