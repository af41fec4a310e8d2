"""lt-pipeline --launcher local: every stage of every seed a process (at most N at once, one thread each), the same
weights and results as the in-process pipeline runner, over the same state files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from cluster_helpers import write_two_stage_sweep
from longtail.cli.pipeline import main as pipeline_main
from longtail.pipeline import SeedState, evaluate_pipeline, load_pipeline, run_pipeline, state_folder
from longtail.utils.checkpoint import load_checkpoint
from longtail.utils.device import usable_cpus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_the_local_launcher_trains_and_evaluates_the_pipeline_as_the_in_process_runner(fmnist_dir, tmp_path):
    sweep_file = write_two_stage_sweep(tmp_path / "files", fmnist_dir, stage1_epochs=3)
    settings = json.loads(sweep_file.read_text())["set"]
    pipeline_file = tmp_path / "files" / "ce_crt.json"
    pipeline = load_pipeline(pipeline_file)
    overrides = list(settings.items())
    sets = [x for key, value in settings.items() for x in ("--set", f"{key}={json.dumps(value)}")]
    launched = tmp_path / "launched"
    assert pipeline_main([str(pipeline_file), "--seeds", "1-2", "--save_dir", str(launched), "-d", "cpu",
                          "--limit_val_batches", "1", "--launcher", "local", "--max_parallel", str(usable_cpus()),
                          "--evaluate", *sets]) == 0
    in_process = tmp_path / "in_process"
    run_pipeline(pipeline, [1, 2], "cpu", in_process, overrides, limit_val_batches=1, threads=1)
    expected = evaluate_pipeline(pipeline, [1, 2], "cpu", in_process)
    for seed in (1, 2):
        for stage in ("stage1", "crt"):
            a, b = (load_checkpoint(Path(SeedState(state_folder(pipeline, root), seed).stages[stage]["run_dir"]) /
                                    "last.pth")["model"] for root in (launched, in_process))
            assert all(torch.equal(a[k], b[k]) for k in a), f"seed {seed} {stage}"
    results = pd.read_csv(state_folder(pipeline, launched) / "results.csv")
    numbers = ["many", "medium", "few", "all"]
    pd.testing.assert_frame_equal(results[numbers].reset_index(drop=True), expected[numbers].reset_index(drop=True))
    table = (state_folder(pipeline, launched) / "table.md").read_text()
    assert "crt + oracle" in table and "forward5 all" in table
    # the in-process runner sees the launched state as finished: nothing is trained again
    lines = []
    run_pipeline(pipeline, [1, 2], "cpu", launched, overrides, log=lines.append, limit_val_batches=1, threads=1)
    assert len(lines) == 4 and all(": done (" in line for line in lines)
