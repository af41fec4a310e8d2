"""A real single-node SLURM cluster (tools/slurm_local.py) and a tiny two-stage Fashion-MNIST sweep."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def slurm_cluster() -> Path:
    """Start (or reuse) the local cluster and point SLURM_CONF at it; skipped with the reason where it cannot run."""
    from tools import slurm_local

    try:
        conf = slurm_local.start()
    except slurm_local.ClusterUnavailable as exc:
        pytest.skip(f"no SLURM cluster: {exc}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    yield conf
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def write_two_stage_sweep(folder: Path, data_dir: Path, stage1_epochs: int = 30, **extra: Any) -> Path:
    """A 2-seed x 2-stage Fashion-MNIST sweep: cross-entropy stage 1, then cRT initialised from it (by exact path),
    one evaluation over three test priors; tiny epochs, one core per job."""
    folder.mkdir(parents=True, exist_ok=True)
    pipeline = {"name": "ce_crt", "priors": ["forward5", "uniform", "backward5"],
                "stages": {"stage1": {"config": str(ROOT / "configs/fmnist_ir100/ce_linear.json")},
                           "crt": {"config": str(ROOT / "configs/fmnist_ir100/crt.json"),
                                   "inputs": {"init_from.checkpoint": "stage1"}}},
                "evaluate": [{"stage": "crt", "posthoc": ["oracle"]}]}
    (folder / "ce_crt.json").write_text(json.dumps(pipeline))
    sweep = {"name": "two_stage", "seeds": "1-2", "runs": [{"pipeline": "ce_crt.json"}],
             "set": {"trainer.epochs": 2, "stage1:trainer.epochs": stage1_epochs, "data_loader.args.imb_factor": 0.1,
                     "data_loader.args.batch_size": 32, "trainer.tensorboard": False,
                     "data_loader.args.data_dir": str(data_dir)},
             "train": {"device": "cpu", "limit_val_batches": 1},
             "resources": {"cpus_per_task": 1, "timeout_min": 20},
             "table": {"priors": ["forward5", "uniform", "backward5"]}, **extra}
    path = folder / "sweep.json"
    path.write_text(json.dumps(sweep, indent=2))
    return path
