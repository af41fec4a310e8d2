"""Sweep files, the job graph, job resources and SLURM parameters, the local launcher's scheduling, the seed state
under concurrent writers, stop signals, SLURM rendezvous variables and submitit's requeue protocol (no cluster
needed: tests/cluster/test_slurm.py runs a real one)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from longtail.cli.sweep import main as sweep_main
from longtail.cluster.jobs import SweepJob, job_state, read_record, requeue_through_submitit, write_record
from longtail.cluster.launchers import LocalLauncher, slurm_parameters
from longtail.cluster.status import last_line, status_frame
from longtail.cluster.sweep import freeze, job_graph, job_resources, load_sweep, pipeline_sweep, read_sweep
from longtail.pipeline import SeedState
from longtail.trainer.distributed import context_from_env, first_slurm_host, slurm_environment
from longtail.trainer.stages import StopRequest
from longtail.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DECOUPLING = ROOT / "configs/pipelines/fmnist_ir100_decoupling.json"
CBE = ROOT / "configs/pipelines/fmnist_ir100_cbe.json"


def write_sweep(folder: Path, data: dict, name: str = "sweep.json") -> Path:
    """A sweep file (JSON, or YAML for a .yaml name)."""
    path = folder / name
    if name.endswith(".yaml"):
        import yaml

        path.write_text(yaml.safe_dump(data))
    else:
        path.write_text(json.dumps(data))
    return path


def test_a_sweep_is_every_run_at_every_grid_point_with_overrides_in_order(tmp_path):
    path = write_sweep(tmp_path, {
        "name": "s", "seeds": "1-2", "set": {"trainer.epochs": 3},
        "runs": [{"pipeline": str(DECOUPLING)}, {"config": "fmnist_ir100/balpoe.json", "set": {"trainer.epochs": 4}}],
        "grid": {"optimizer.args.lr": [0.05, 0.1]}}, "s.yaml")
    sweep = load_sweep(path, tmp_path / "saved", overrides=[("data_loader.args.data_dir", "/data")])
    assert [v.name for v in sweep.variants] == ["fmnist_ir100_decoupling-lr0.05", "fmnist_ir100_decoupling-lr0.1",
                                                "balpoe-lr0.05", "balpoe-lr0.1"]
    assert sweep.seeds == [1, 2] and sweep.folder == str(tmp_path / "saved/sweeps/s")
    balpoe = sweep.variants[2]
    # sweep set < grid point < the run's set < the command line; the last pair of a key wins when applied
    assert balpoe.overrides == [("trainer.save_dir", str(tmp_path / "saved")), ("trainer.epochs", 3),
                                ("optimizer.args.lr", 0.05), ("trainer.epochs", 4), ("data_loader.args.data_dir", "/data")]
    assert balpoe.folder == str(tmp_path / "saved/sweeps/s/balpoe-lr0.05")
    assert sweep.variants[0].methods() == ["crt-lr0.05", "lws-lr0.05", "tau_norm-lr0.05"]
    assert balpoe.methods() == ["balpoe-lr0.05"]


def test_the_job_graph_links_each_stage_to_the_stages_it_reads(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"name": "g", "seeds": [1, 2], "runs": [{"pipeline": str(DECOUPLING)},
                                                                                      {"pipeline": str(CBE)}]}), tmp_path)
    jobs = {job.key: job for job in job_graph(sweep)}
    assert jobs["fmnist_ir100_decoupling/seed2/stage1"].deps == ()
    assert jobs["fmnist_ir100_decoupling/seed2/lws"].deps == ("fmnist_ir100_decoupling/seed2/stage1",)
    assert jobs["fmnist_ir100_cbe/seed1/calibration"].deps == tuple(f"fmnist_ir100_cbe/seed1/{g}" for g in
                                                                     ("many", "medium", "few"))
    evaluate = jobs["fmnist_ir100_decoupling/evaluate"]
    assert evaluate.kind == "evaluate" and len(evaluate.deps) == 8 and all("decoupling/seed" in d for d in evaluate.deps)
    order = list(jobs)
    assert all(order.index(d) < order.index(k) for k, job in jobs.items() for d in job.deps), "dependencies first"
    assert len(jobs) == 2 * (4 + 5) + 2


@pytest.mark.parametrize("data, message", [
    ({"runs": []}, "'runs' must be a non-empty list"),
    ({"runs": [{"pipeline": str(DECOUPLING), "config": "x.json"}]}, "exactly one of 'pipeline' and 'config'"),
    ({"runs": [{"config": "nope.json"}]}, "nope.json: no such file"),
    ({"runs": [{"config": "fmnist_ir100/ce.json"}], "seed": 3}, "unknown key\\(s\\) \\['seed'\\]"),
    ({"runs": [{"config": "fmnist_ir100/ce.json"}], "resources": {"gpus": 2}}, "resources: unknown key\\(s\\) \\['gpus'\\]"),
    ({"runs": [{"config": "fmnist_ir100/ce.json"}], "grid": {"optimizer.args.lr": 0.1}}, "grid.optimizer.args.lr must be"),
    ({"runs": [{"config": "fmnist_ir100/ce.json"}, {"config": "cifar100_ir100/ce.json"}]}, "both called 'ce'"),
    ({"runs": [{"pipeline": str(DECOUPLING)}, {"pipeline": str(DECOUPLING), "label": "again"}, {"config": "fmnist_ir100/ce.json", "label": "again/crt"}]},
     "both give rows labelled 'again/crt'"),
])
def test_bad_sweep_files_get_one_clear_error(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write_sweep(tmp_path, {"name": "bad", **data}), tmp_path)


def test_relaunching_keeps_the_sweep_and_adds_seeds(tmp_path):
    path = write_sweep(tmp_path, {"name": "f", "seeds": "1-2", "runs": [{"config": "fmnist_ir100/ce.json"}]})
    first = load_sweep(path, tmp_path)
    freeze(first)
    write_record(first.folder, "ce/evaluate", state="done", seeds=[1, 2])
    assert job_state(first, "ce/evaluate") == "done"
    more = load_sweep(path, tmp_path, seeds="3")
    freeze(more)
    assert more.seeds == [1, 2, 3] and read_sweep(tmp_path / "sweeps/f").seeds == [1, 2, 3]
    assert job_state(more, "ce/evaluate") == "pending", "the table must be evaluated again over 3 seeds"
    with pytest.raises(ConfigError, match="describes another sweep"):
        freeze(load_sweep(path, tmp_path, overrides=[("optimizer.args.lr", 0.2)]))


def test_job_resources_come_from_the_config_then_the_sweep_the_run_the_stage_and_the_command_line(tmp_path):
    pipeline = {"name": "p", "stages": {"a": {"config": str(ROOT / "configs/fmnist_ir100/ce_linear.json"),
                                              "resources": {"timeout_min": 30, "cpus_per_task": 6}},
                                        "b": {"config": str(ROOT / "configs/fmnist_ir100/crt.json"),
                                              "inputs": {"init_from.checkpoint": "a"}}}}
    (tmp_path / "p.json").write_text(json.dumps(pipeline))
    data = {"name": "r", "runs": [{"pipeline": "p.json", "resources": {"partition": "long"},
                                   "set": {"n_gpu": 4, "b:n_gpu": 2, "data_loader.args.num_workers": 7}}],
            "resources": {"partition": "gpu", "account": "lab", "cpus_per_task": 2}}
    sweep = load_sweep(write_sweep(tmp_path, data), tmp_path, resources={"account": "other", "mem_gb": None})
    jobs = {job.stage or job.kind: job for job in job_graph(sweep)}
    a, b, evaluate = (job_resources(sweep, jobs[k]) for k in ("a", "b", "evaluate"))
    # n_gpu 4 (DDP) -> 4 GPUs and 4 tasks; the stage's cpus_per_task beats the sweep's, which beats 7 workers + 1
    assert (a["gpus_per_node"], a["tasks_per_node"], a["cpus_per_task"], a["timeout_min"]) == (4, 4, 6, 30)
    assert (a["partition"], a["account"]) == ("long", "other")
    assert (b["cpus_per_task"], b["timeout_min"], b["gpus_per_node"], b["tasks_per_node"]) == (2, 720, 2, 2)
    assert (evaluate["nodes"], evaluate["tasks_per_node"], evaluate["gpus_per_node"]) == (1, 1, 1)
    on_cpu = load_sweep(write_sweep(tmp_path, {**data, "train": {"device": "cpu"}}), tmp_path)
    assert job_resources(on_cpu, jobs["a"])["gpus_per_node"] == 0

    parameters, requeues = slurm_parameters(sweep, jobs["b"], ["41", "42"])
    assert parameters["dependency"] == "afterok:41:42" and requeues == 10
    assert parameters["additional_parameters"] == {"requeue": True, "kill_on_invalid_dep": "yes"}
    assert (parameters["ntasks_per_node"], parameters["time"], parameters["job_name"]) == (2, 720, "r:p/seed1/b")
    cpu_parameters, _ = slurm_parameters(on_cpu, jobs["a"], [])
    assert "gpus_per_node" not in cpu_parameters and "dependency" not in cpu_parameters
    mem = load_sweep(write_sweep(tmp_path, {**data, "resources": {"mem_gb": 1.5}}), tmp_path)
    assert slurm_parameters(mem, jobs["a"], [])[0]["mem"] == "1536MB"


def fake_start(codes: dict[str, int], trace: Path):
    """LocalLauncher.start replaced by a short process that logs its start / end times and exits with codes[key]."""
    def start(self, sweep, job, threads):
        import subprocess

        script = ("import json,sys,time; t=time.time(); time.sleep(0.3); "
                  f"open({str(trace)!r},'a').write(json.dumps([{job.key!r}, t, time.time(), {threads}])+'\\n'); "
                  f"sys.exit({codes.get(job.key, 0)})")
        return subprocess.Popen([sys.executable, "-c", script])
    return start


def test_the_local_launcher_runs_dependencies_first_at_most_n_at_once_and_cancels_what_a_failure_blocks(
        tmp_path, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path, {"name": "l", "seeds": "1-2", "runs": [{"pipeline": str(DECOUPLING)}]}),
                       tmp_path)
    freeze(sweep)
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setattr(LocalLauncher, "start", fake_start({"fmnist_ir100_decoupling/seed2/stage1": 3}, trace))
    monkeypatch.setattr("longtail.cluster.launchers.usable_cpus", lambda: 4)
    assert LocalLauncher(2).launch(sweep, log=lambda line: None) == 1
    runs = {key: (start, end, threads) for key, start, end, threads in map(json.loads, trace.read_text().splitlines())}
    seed1 = [f"fmnist_ir100_decoupling/seed1/{s}" for s in ("stage1", "crt", "lws", "tau_norm")]
    assert set(runs) == {*seed1, "fmnist_ir100_decoupling/seed2/stage1"}, "seed 2's later stages never started"
    assert all(runs[k][0] >= runs[seed1[0]][1] for k in seed1[1:]), "stage 1 ended before its readers started"
    events = sorted([(s, 1) for s, _, _ in runs.values()] + [(e, -1) for _, e, _ in runs.values()])
    running = [sum(d for _, d in events[:i + 1]) for i in range(len(events))]
    assert max(running) == 2 and {t for *_, t in runs.values()} == {2}, "2 at once, 4 cores / 2 = 2 threads each"
    assert read_record(sweep.folder, "fmnist_ir100_decoupling/seed2/stage1")["error"] == "exit code 3"
    assert read_record(sweep.folder, "fmnist_ir100_decoupling/seed2/crt") == {
        "state": "cancelled", "error": "dependency fmnist_ir100_decoupling/seed2/stage1 failed"}
    assert read_record(sweep.folder, "fmnist_ir100_decoupling/evaluate")["state"] == "cancelled"
    frame = status_frame(read_sweep(sweep.folder)).set_index("job")
    assert frame.loc["fmnist_ir100_decoupling/seed2/stage1", "state"] == "failed"
    assert frame.loc["fmnist_ir100_decoupling/seed2/lws", "state"] == "cancelled"
    assert frame.loc["fmnist_ir100_decoupling/seed2/lws", "last line"].startswith("dependency fmnist_ir100_decoupling/")

    # launching again runs only what is not done; an interrupted job (exit 130) stops the launcher from starting more
    trace.unlink()
    monkeypatch.setattr(LocalLauncher, "start", fake_start({"fmnist_ir100_decoupling/seed2/stage1": 130}, trace))
    for key in seed1:  # the fake jobs wrote no records: mark seed 1 done as the real jobs do
        write_record(sweep.folder, key, state="done")
    assert LocalLauncher(2).launch(sweep, log=lambda line: None) == 130
    assert [json.loads(l)[0] for l in trace.read_text().splitlines()] == ["fmnist_ir100_decoupling/seed2/stage1"]


def _record_stages(folder: str, seed: int, prefix: str, count: int) -> None:
    state = SeedState(Path(folder), seed)
    for i in range(count):
        state.record(f"{prefix}{i}", Path(f"/runs/{prefix}{i}"), i % 2 == 0)


def test_concurrent_stages_of_one_seed_lose_no_record(tmp_path):
    processes = [mp.get_context("fork").Process(target=_record_stages, args=(str(tmp_path), 1, p, 40)) for p in "abc"]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    stages = SeedState(tmp_path, 1).stages
    assert len(stages) == 120 and stages["b39"] == {"run_dir": "/runs/b39", "done": False}


def test_scheduler_signals_take_the_ctrl_c_path_and_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGUSR2)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGUSR2)  # SLURM and submitit send both: the second is recorded, not fatal
        time.sleep(0.05)
        assert stop.requested and stop.received == ["SIGTERM", "SIGUSR2"]
    assert signal.getsignal(signal.SIGUSR2) is before
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C still aborts at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


def test_slurm_job_steps_give_the_rendezvous_and_batch_scripts_stay_single():
    assert first_slurm_host("gpu[07-09,12],cpu3") == "gpu07" and first_slurm_host("n1,n2") == "n1"
    assert first_slurm_host("rack[2-3]-gpu") == "rack2-gpu" and first_slurm_host("vm") == "vm"
    step = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
            "SLURM_STEP_NODELIST": "node[3-6]", "SLURM_NTASKS": "8"}
    assert slurm_environment(step) == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "node3",
                                       "MASTER_PORT": str(20000 + 4242)}
    ctx = context_from_env(step)
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.is_primary) == (5, 1, 8, False)
    batch_script = {k: v for k, v in step.items() if not k.startswith("SLURM_STEP")}  # sbatch / salloc shell
    assert slurm_environment(batch_script) == {} and context_from_env(batch_script).world_size == 1
    assert slurm_environment({**step, "RANK": "0", "WORLD_SIZE": "2"}) == {}, "torchrun inside a job wins"
    assert slurm_environment({**step, "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"


def test_after_the_save_submitits_handler_checkpoints_the_job_and_requeues_it(tmp_path):
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths

    class Env:
        global_rank = 0
        requeued: list[int] = []

        def _requeue(self, countdown: int) -> None:
            self.requeued.append(countdown)

    delayed = DelayedSubmission(SweepJob(str(tmp_path), "v/seed1/a"))
    delayed.set_timeout(60, 3)
    paths = JobPaths(tmp_path, job_id="7")
    paths.folder.mkdir(parents=True, exist_ok=True)
    handler = SignalHandler(Env(), paths, delayed)
    exits = []
    handler._exit = lambda: exits.append(True)
    previous = signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    try:
        requeue_through_submitit()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert Env.requeued == [3] and exits == [True], "preempted (not timed out): requeued without using a timeout"
    resubmitted = DelayedSubmission.load(paths.submitted_pickle).function
    assert isinstance(resubmitted, SweepJob) and (resubmitted.sweep_folder, resubmitted.key) == (str(tmp_path), "v/seed1/a")
    requeue_through_submitit()  # outside submitit (default handler): nothing happens


def test_last_line_reads_past_progress_bars(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("first\nepoch 1:  10%\repoch 1:  50%\r\n\n")
    assert last_line(log) == "epoch 1:  50%" and last_line(tmp_path / "none") == ""


def test_pipeline_launcher_shares_the_pipeline_runners_state_folder(tmp_path):
    sweep = pipeline_sweep(DECOUPLING, [1, 3], tmp_path, [("trainer.epochs", 1)], {"partition": "p"}, {"device": "cpu"})
    assert sweep.folder == sweep.variants[0].folder == str(tmp_path / "pipelines/fmnist_ir100_decoupling")
    assert [j.key for j in job_graph(sweep)][:2] == ["fmnist_ir100_decoupling/seed1/stage1", "fmnist_ir100_decoupling/seed1/crt"]
    assert not any(j.kind == "evaluate" for j in job_graph(sweep)) and sweep.cli_resources == {"partition": "p"}


def test_status_of_an_unlaunched_sweep_is_one_error_line(tmp_path, capsys):
    path = write_sweep(tmp_path, {"name": "never", "runs": [{"config": "fmnist_ir100/ce.json"}]})
    assert sweep_main(["status", str(path), "--save_dir", str(tmp_path)]) == 2
    assert "is not a launched sweep" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "configs/sweeps").glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_sweep_loads_and_its_stages_resolve(path, tmp_path):
    from longtail.core.build import build_without_data, resolve
    from longtail.utils.config import apply_overrides, load_config

    sweep = load_sweep(path, tmp_path)
    jobs = job_graph(sweep)
    assert len({job.variant for job in jobs}) == len(sweep.variants) and sweep.seeds
    for job in jobs:
        resources = job_resources(sweep, job)
        assert resources["gpus_per_node"] == 0 and resources["cpus_per_task"] == 2
    for variant in sweep.variants:
        for stage in variant.pipeline().stages:
            inputs = [(k, "x.pth" if isinstance(v, str) else ["x.pth"] * len(v)) for k, v in stage.inputs.items()]
            config = resolve(apply_overrides(load_config(stage.config), [*stage.set.items(), *inputs, *variant.overrides]))
            assert build_without_data(config)["model"] is not None
