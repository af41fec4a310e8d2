"""Every command-line tool answers --help, and every console entry point of pyproject.toml exists."""
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# the installed command lines (longtail.cli) and the repository's maintenance tools (tools/, not installed)
TOOLS = sorted([f"longtail.cli.{p.stem}" for p in (ROOT / "longtail" / "cli").glob("*.py")
                if p.stem not in ("__init__", "common")] +
               [f"tools.{p.stem}" for p in (ROOT / "tools").glob("*.py") if p.stem != "__init__"])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_entry_points_resolve(name):
    module, function = SCRIPTS[name].split(":")
    assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_has_help(tool, capsys):
    module = importlib.import_module(tool)
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out
