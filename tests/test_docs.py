"""The documentation's code runs: every Python snippet of docs/extending.md is a complete file (its imports
included) that registers what it says, executed in a fresh process so the test registries stay clean."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "extending.md").read_text(), re.S)
CHECK = '''
from longtail.registry import AGGREGATIONS, LOSSES, MODEL_EXTENSIONS, POSTHOC, REPORTERS, SECTIONS, cli_flags
import torch
registered = {name for registry in (AGGREGATIONS, LOSSES, MODEL_EXTENSIONS, POSTHOC, REPORTERS, SECTIONS)
              for name in registry.names()}
print(sorted(registered & {"my_loss", "temperature", "max_norm", "confidence_weighted", "shift_by_train_prior",
                            "mean_top_logit"}))
if "my_loss" in registered:  # the loss computes what its docstring says
    loss = LOSSES.build({"type": "my_loss", "args": {"weight": 0.5}}, "loss", cls_num_list=[30, 10])
    logits, target = torch.zeros(2, 1, 2), torch.tensor([0, 1])
    prior = torch.tensor([0.75, 0.25])
    expected = torch.nn.functional.cross_entropy(0.5 * prior.log().expand(2, 2), target)
    assert torch.allclose(loss(logits, target).total, expected, atol=1e-6)
'''


def test_every_snippet_names_its_file():
    assert len(SNIPPETS) >= 4
    assert all(snippet.startswith("# ") and ".py" in snippet.splitlines()[0] for snippet in SNIPPETS)


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_in_a_fresh_process(index, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(SNIPPETS[index] + "\n" + CHECK)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() != "[]"  # it registered its entry
