"""The layering of docs/extending.md, checked on the source: who may import whom, and the engine names no method."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("utils", "data_loader", "model", "trainer", "evaluation", "methods", "tools", "benchmarks")
# package -> project packages it may import (tools and top-level scripts may import everything)
ALLOWED = {
    "utils": set(),
    "data_loader": {"utils"},
    "model": {"utils"},
    "trainer": {"utils", "data_loader", "model", "trainer", "evaluation"},
    "evaluation": {"utils", "data_loader", "model", "trainer", "evaluation"},
    "methods": {"utils", "data_loader", "model", "trainer", "evaluation", "methods"},
    "benchmarks": {"utils", "data_loader", "model", "trainer", "evaluation"},
}
# Engine = training loop, builder, evaluator and the generic command-line tools: none of them may name a method
# (a method may ship a tool of its own, e.g. tools/tau_norm.py).
GENERIC_TOOLS = ("common", "train", "evaluate", "flops", "benchmark", "make_test_priors")
ENGINE = [p for pkg in ("trainer", "evaluation") for p in (ROOT / pkg).glob("*.py")] + [
    ROOT / "tools" / f"{name}.py" for name in GENERIC_TOOLS] + [
    ROOT / name for name in ("train.py", "test.py", "test_all_cifar.py", "test_all_imagenet.py", "test_all_inat.py")]
METHOD_WORDS = ("ride", "router", "distill", "teacher", "sade", "cbe", "tau_norm", "lws", "lade", "balpoe",
                "experts_used")


def project_imports(path: Path) -> set[str]:
    """Top-level project packages imported by a module (import x.y / from x.y import z)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_import_only_what_they_may(package):
    violations = {str(p.relative_to(ROOT)): sorted(project_imports(p) - ALLOWED[package] - {package})
                  for p in (ROOT / package).rglob("*.py")}
    assert not {k: v for k, v in violations.items() if v}


def code_words(path: Path) -> set[str]:
    """Identifiers and string constants of a module, without docstrings and comments (examples there are fine)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id.lower())
        elif isinstance(node, ast.Attribute):
            words.add(node.attr.lower())
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value.lower())
    return words


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_names_no_method(path):
    """Methods reach the engine only through registries (trainer/hooks.py, evaluation/hooks.py)."""
    hits = sorted(w for w in code_words(path) if any(m in w.split(".")[-1].split("_") or w == m or m in w.split()
                                                     for m in METHOD_WORDS))
    assert not hits, f"{path.relative_to(ROOT)} names {hits}"
