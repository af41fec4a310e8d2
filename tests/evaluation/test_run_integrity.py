"""Tables never silently mix unfinished or duplicate runs (issue 22): every aggregation refuses a checkpoint whose
training did not finish (or includes it marked, on request) and refuses two runs of one config and seed."""
import csv

import pytest

from conftest import tiny_config, train_with_interrupt, write_config
from longtail.cli.evaluate import priors_main, uniform_main
from longtail.cli.tables import main as tables_main
from longtail.cli.train import main as train_main
from longtail.utils.checkpoint import load_checkpoint, run_status

FAST = ["-d", "cpu", "--quiet", "--limit_batches", "2", "--limit_val_batches", "1"]


@pytest.fixture(scope="module")
def runs(cifar10_dir, tmp_path_factory):
    """finished seed 1 (twice: a repeated demo), an interrupted seed 1 and an interrupted seed 2."""
    root = tmp_path_factory.mktemp("integrity")
    config = write_config(root / "c.json", tiny_config(cifar10_dir, root / "saved", epochs=2))
    made = {}
    for name, seed, stop in (("done1", 1, None), ("again1", 1, None), ("cut1", 1, (1, 0)), ("cut2", 2, (2, 1))):
        argv = ["-c", str(config), "--seed", str(seed), "--save_dir", str(root / name), *FAST]
        code = train_main(argv) if stop is None else train_with_interrupt(argv, at=stop)
        assert code == (0 if stop is None else 130)
        made[name] = next((root / name).rglob("last.pth"))
    return made


def test_run_status_reads_how_far_training_got(runs):
    assert run_status(load_checkpoint(runs["done1"]), runs["done1"]) == "finished"
    assert run_status(load_checkpoint(runs["cut1"]), runs["cut1"]).startswith("unfinished: epoch 0 of 2")
    status = run_status(load_checkpoint(runs["cut2"]), runs["cut2"])
    assert status == "unfinished: epoch 1 of 2, interrupted after step 2 of epoch 2"
    snapshot = runs["done1"].parent / "checkpoint-epoch1.pth"  # an intermediate file of a finished run
    assert run_status(load_checkpoint(snapshot), snapshot) == "snapshot: epoch 1 of 2"


def test_an_interrupted_run_beside_a_finished_one_is_refused(runs, tmp_path, capsys):
    """The reported case: an interrupted demo next to the finished run of the same seed."""
    code = priors_main(["uniform"], ["-r", str(runs["done1"]), str(runs["cut1"]), "-d", "cpu", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "did not finish" in err and str(runs["cut1"]) in err and "--include_unfinished" in err
    assert not (tmp_path / "results.csv").exists()


def test_two_finished_runs_of_one_seed_are_refused_or_the_latest_kept(runs, tmp_path, capsys):
    code = uniform_main(["-r", str(runs["done1"]), str(runs["again1"]), "-d", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "same config and seed" in err and str(runs["done1"]) in err and str(runs["again1"]) in err
    assert uniform_main(["-r", str(runs["done1"]), str(runs["again1"]), "-d", "cpu", "--latest",
                         "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["checkpoint"] for r in rows] == [str(runs["again1"])]  # written after done1
    assert "skipped the older run" in capsys.readouterr().err


def test_unfinished_runs_are_included_and_marked_on_request(runs, tmp_path):
    assert priors_main(["uniform"], ["-r", str(runs["done1"]), str(runs["cut2"]), "-d", "cpu", "--include_unfinished",
                                     "--out", str(tmp_path)]) == 0
    rows = {r["seed"]: r for r in csv.DictReader((tmp_path / "results.csv").open())}
    assert rows["1"]["status"] == "finished"
    assert rows["2"]["status"].startswith("unfinished") and rows["2"]["run"].endswith("[unfinished]")
    # the table tool refuses the file unless asked
    assert tables_main([str(tmp_path / "results.csv"), "--metrics", "all"]) == 2
    assert tables_main([str(tmp_path / "results.csv"), "--metrics", "all", "--include_unfinished"]) == 0


def test_the_table_tool_refuses_one_seed_from_two_checkpoints(runs, tmp_path, capsys):
    for name in ("done1", "again1"):
        assert priors_main(["uniform"], ["-r", str(runs[name]), "-d", "cpu", "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    assert tables_main([str(tmp_path / "done1" / "results.csv"), str(tmp_path / "again1" / "results.csv")]) == 2
    err = capsys.readouterr().err
    assert "several checkpoints" in err and str(runs["again1"]) in err


def test_a_single_unfinished_checkpoint_is_reported_marked(runs, capsys):
    assert uniform_main(["-r", str(runs["cut2"]), "-d", "cpu"]) == 0
    assert "unfinished" in capsys.readouterr().err
