"""The README's summary scripts: mean ± std cells from known per-seed numbers in the tidy CSV layout."""
import csv
import importlib.util

from conftest import ROOT


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_rows(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_summarize_priors_cells_are_mean_and_sample_std(tmp_path):
    header = ["checkpoint", "seed", "prior", "posthoc", "all"]
    rows = [[f"s{s}.pth", s, prior, mode, value + s] for s in (1, 2, 3)
            for prior, value in (("forward50", 90.0), ("uniform", 80.0)) for mode in ("none", "oracle")]
    write_rows(tmp_path / "m" / "results.csv", header, rows)
    write_rows(tmp_path / "m" / "uniform" / "results.csv", ["checkpoint", "ece"], [["a", 1.0], ["b", 2.0], ["c", 6.0]])
    table = load_script("summarize_priors").summarize(tmp_path, ["m"]).splitlines()
    assert table[0] == "| method | seeds | f50 | uni | ECE |"
    # seeds add 1, 2, 3 -> mean +2, sample std 1; ECE 1, 2, 6 -> mean 3, std sqrt(7)
    assert table[2] == "| m | 3 | 92.00 ± 1.00 | 82.00 ± 1.00 | 3.00 ± 2.65 |"
    assert table[3].startswith("| m + oracle prior | 3 | 92.00 ± 1.00")


def test_summarize_methods_reads_each_evaluation_folder(tmp_path):
    write_rows(tmp_path / "ce" / "uniform" / "results.csv", ["checkpoint", "all", "ece"], [["a", 80.0, 5.0], ["b", 84.0, 7.0]])
    write_rows(tmp_path / "ce" / "oracle" / "results.csv", ["checkpoint", "prior", "posthoc", "all"],
               [["a", "forward50", "none", 90.0], ["b", "forward50", "none", 92.0],
                ["a", "forward50", "oracle", 93.0], ["b", "forward50", "oracle", 95.0]])
    table = load_script("summarize_methods").summarize(tmp_path).splitlines()
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:4] == ["ce", "2", "82.00 ± 2.83", "91.00 ± 1.41"] and cells[5] == "94.00 ± 1.41"
    assert cells[13] == "6.00 ± 1.41" and len(table) == 3  # methods without results are left out
