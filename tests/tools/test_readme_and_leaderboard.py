"""The README's generated tables (tools/readme.py) and the leaderboard (tools/leaderboard.py)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tools import leaderboard, readme
from tools.benchmark import schedule_estimate

ROOT = Path(__file__).resolve().parents[2]


DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_generated_blocks_of_the_readme_and_docs_are_current(capsys, monkeypatch):
    """Every table between '<!-- generated: CMD -->' markers equals what CMD prints now (run python -m tools.readme)."""
    monkeypatch.chdir(ROOT)
    assert readme.main(["--check", *map(str, DOCUMENTS)]) == 0, capsys.readouterr().out
    assert sum(p.read_text().count("<!-- generated: python -m ") for p in DOCUMENTS) >= 4
    assert "<!-- generated: python -m tools.leaderboard -->" in (ROOT / "docs" / "leaderboard.md").read_text()


def test_stale_blocks_are_found_and_regenerated(tmp_path, capsys):
    rows = [{"method": m, "seed": s, "prior": p, "all": a, "many": a, "medium": a, "few": a}
            for m, base in (("a", 50.0), ("b", 60.0)) for s in (1, 2) for p, a in (("uniform", base + s),)]
    pd.DataFrame(rows).to_csv(tmp_path / "r.csv", index=False)
    doc = tmp_path / "DOC.md"
    doc.write_text(f"intro\n<!-- generated: python -m longtail.cli.tables {tmp_path / 'r.csv'} --metrics all -->\nold\n"
                   "<!-- end generated -->\noutro\n")
    assert readme.main(["--check", str(doc)]) == 1 and "stale generated block" in capsys.readouterr().out
    assert readme.main([str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("<!-- end generated -->\noutro\n")
    assert "51.50 ± 0.71" in text and "**61.50 ± 0.71**" in text  # mean ± sample std of the seeds, best in bold
    assert readme.main(["--check", str(doc)]) == 0


def test_only_shipped_tools_may_generate(tmp_path):
    doc = tmp_path / "DOC.md"
    doc.write_text("<!-- generated: rm -rf / -->\nx\n<!-- end generated -->\n")
    assert readme.main(["--check", str(doc)]) == 2


def test_time_cells():
    assert leaderboard.time_cell(None) == leaderboard.NOT_MEASURED
    assert leaderboard.time_cell({"training": False}).startswith("no SGD")
    record = {"epochs": 30, "schedule_hours": 0.5}
    assert leaderboard.time_cell(record, 30) == "30 min"
    assert leaderboard.time_cell(record, 50).startswith("stale: benchmarked for 30 epochs")
    assert [leaderboard.format_hours(h) for h in (0.004, 0.5, 30.0, 100.0)] == ["1 min", "30 min", "30.0 h", "4.2 days"]


def test_schedule_estimate_by_hand():
    """10 epochs of 60 s plus a validation every 5 epochs of 1,000 test images at 500 images/s: 604 s."""
    config = {"trainer": {"epochs": 10, "val_period": 5}, "data_loader": {"type": "x", "args": {}}}
    data = SimpleNamespace(test_set=type("TestSet", (), {"name": "x/test", "__len__": lambda self: 1000})())
    estimate = schedule_estimate(config, data, {"train_epoch_s_estimate": 60.0, "eval_images_per_s": 500.0})
    assert estimate == {"epochs": 10, "validations": 2, "schedule_hours": pytest.approx(604 / 3600, rel=1e-3)}


def test_leaderboard_lists_every_shipped_config_with_its_numbers(tmp_path, capsys):
    timings = tmp_path / "timings_cpu.json"
    timings.write_text(json.dumps({"configs": {
        "configs/cifar100_ir100/balpoe_standard.json": {"device": "cpu", "threads": 2, "schedule_hours": 26.0},
        "configs/cifar100_ir100/tau_norm.json": {"device": "cpu", "threads": 2, "training": False}}}))
    assert leaderboard.main(["--root", str(ROOT), "--timings", str(timings)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    shipped = leaderboard.shipped_configs(ROOT)
    assert len(rows) >= len(shipped)
    for path in shipped:
        assert any(f"`{path.name}" in row for row in rows), path
    balpoe = next(r for r in out.split("**cifar100_ir100**")[1].splitlines() if r.startswith("| `balpoe_standard.json`"))
    assert "52.0 ± 0.5" in balpoe and "BalPoE CVPR 2023" in balpoe and "26.0 h" in balpoe and "not measured" in balpoe
    assert "time, 1 GPU" in out and "time, 2 CPU threads" in out


def test_paper_numbers_name_only_shipped_configs(tmp_path, capsys):
    paper, timings = tmp_path / "paper.json", tmp_path / "timings.json"
    paper.write_text(json.dumps({"configs/nowhere/x.json": {"top1": "1.0", "source": "?"}}))
    timings.write_text(json.dumps({"configs": {}}))
    assert leaderboard.main(["--root", str(ROOT), "--paper", str(paper), "--timings", str(timings)]) == 2
    assert "configs/nowhere/x.json" in capsys.readouterr().err
