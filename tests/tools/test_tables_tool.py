"""longtail/cli/tables.py: paper tables from tidy results files, with selections and known mean ± std numbers."""
import pandas as pd

from longtail.cli.tables import main as tables_main


def write(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def results(method, values, posthoc="none", evaluation="test_all"):
    """Three seeds; ``values``: prior -> all-accuracy of seed 1 (seeds 2 and 3 add 1 and 2)."""
    return [{"checkpoint": f"{method}{s}.pth", "run": f"seed{s}", "seed": s, "method": method, "prior": prior,
             "posthoc": posthoc, "aggregation": "mean", "evaluation": evaluation, "all": value + s - 1,
             "ece": 3.0 * s} for s in (1, 2, 3) for prior, value in values.items()]


def test_methods_as_rows_priors_as_columns(tmp_path, capsys):
    a = write(tmp_path / "a.csv", results("ce", {"forward50": 90.0, "uniform": 80.0, "backward50": 70.0})
              + results("ce", {"forward50": 91.0, "uniform": 80.0, "backward50": 75.0}, "oracle"))
    b = write(tmp_path / "b.csv", results("balpoe", {"forward50": 89.0, "uniform": 85.0, "backward50": 84.0})
              + results("balpoe", {"uniform": 0.0}, evaluation="test"))
    assert tables_main([a, b, "--metrics", "all", "--priors", "uniform,backward50", "--methods", "balpoe,ce",
                        "--out", str(tmp_path / "t.md")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | uniform all | backward50 all |"
    assert lines[2] == "| balpoe | **86.00 ± 1.00** | **85.00 ± 1.00** |"  # seeds 85, 86, 87: mean 86, sample std 1
    assert lines[3] == "| ce | 81.00 ± 1.00 | 71.00 ± 1.00 |" and lines[4].startswith("| ce + oracle | 81.00 ± 1.00 | 76.00")
    assert (tmp_path / "t.md").read_text().splitlines()[2] == lines[2]
    assert tables_main([b, "--evaluation", "test", "--metrics", "ece", "--style", "latex"]) == 0
    tex = capsys.readouterr().out
    assert r"seed2 & 6.00 \\" in tex and r"mean $\pm$ std & 6.00 $\pm$ 3.00 \\" in tex


def test_selection_errors_name_the_option(tmp_path, capsys):
    a = write(tmp_path / "a.csv", results("ce", {"uniform": 80.0}))
    assert tables_main([a, "--priors", "sideways7"]) == 2
    assert "--priors ['sideways7'] not in the results" in capsys.readouterr().err
    assert tables_main([a, "--metrics", "top5"]) == 2
    assert tables_main([str(tmp_path / "nope.csv")]) == 2
