"""The layering of docs/extending.md, checked on the source: one installed name, who may import whom, no import
circle between the engine's parts, and the engine names no method (whole words of the code, not its comments)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "longtail"
# layer -> the layers it may import (besides itself); a layer is a subpackage or a top-level module of longtail
ALLOWED = {
    "utils": set(),
    "registry": {"utils"},
    "data_loader": {"utils", "registry"},
    "model": {"utils", "registry"},
    "core": {"utils", "registry", "data_loader", "model"},
    "trainer": {"utils", "registry", "data_loader", "model", "core"},
    "evaluation": {"utils", "registry", "data_loader", "model", "core"},
    "methods": {"utils", "registry", "data_loader", "model", "core", "trainer", "evaluation"},
    "pipeline": {"utils", "registry", "data_loader", "model", "core", "trainer", "evaluation"},
    "api": {"utils", "registry", "data_loader", "model", "core", "trainer", "evaluation", "pipeline"},
    "cluster": {"utils", "registry", "data_loader", "model", "core", "trainer", "evaluation", "pipeline"},
    "cli": {"utils", "registry", "data_loader", "model", "core", "trainer", "evaluation", "pipeline", "api", "cluster"},
    "__init__": {"api"},
}
# The engine: everything a method plugs into. None of it may name a method (methods register themselves).
ENGINE_LAYERS = ("utils", "registry", "core", "trainer", "evaluation", "pipeline", "cluster", "api", "__init__")
GENERIC_CLI = ("common", "train", "evaluate", "flops", "make_test_priors", "pipeline", "tables", "sweep", "make_shards")
SCRIPTS = ("train.py", "test.py", "test_all_cifar.py", "test_all_imagenet.py", "test_all_inat.py")
METHOD_WORDS = ("ride", "router", "distill", "teacher", "sade", "cbe", "tau_norm", "lws", "lade", "balpoe",
                "experts_used", "tau_list", "tau_min", "tau_max", "bcl", "ncl", "shike", "mdcs", "dirmixe", "lift")


def layer_of(path: Path) -> str:
    """The layer of a module inside longtail/."""
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_layers(path: Path) -> set[str]:
    """Layers of longtail a module imports (absolute imports; relative imports are not used in this project)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names = [node.module or ""]
            if node.module == "longtail":
                names = [f"longtail.{alias.name}" for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("longtail.")}
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_is_the_only_top_level_code():
    """Code lives in longtail/; the repository root has only the thin scripts and the maintenance tools."""
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top == {"longtail", "tools", "benchmarks"}, top  # tools/benchmarks are not installed (setup.py)
    setup = (ROOT / "setup.py").read_text()
    assert 'include=["longtail", "longtail.*"]' in setup


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layers_import_only_what_they_may(path):
    layer = layer_of(path)
    assert layer in ALLOWED, f"{path.relative_to(ROOT)}: new layer {layer!r}: add it to ALLOWED"
    assert not imported_layers(path) - ALLOWED[layer] - {layer}, f"{path.relative_to(ROOT)} imports " \
        f"{sorted(imported_layers(path) - ALLOWED[layer] - {layer})}"


def test_trainer_and_evaluation_are_siblings():
    """Neither imports the other (the builder and the logits pass live in core below both)."""
    for a, b in (("trainer", "evaluation"), ("evaluation", "trainer")):
        assert not any(b in imported_layers(p) for p in (PACKAGE / a).rglob("*.py")), f"{a} imports {b}"


def docstring_ids(tree: ast.AST) -> set[int]:
    """ids of the docstring constants of a module (documentation may name methods as examples)."""
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def code_words(source: str) -> set[str]:
    """Identifiers, attribute names, argument names and string constants of the code (comments and docstrings are
    not code), lower-cased."""
    tree = ast.parse(source)
    docs = docstring_ids(tree)
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.arg):
            words.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            words.add(node.name)
        elif isinstance(node, ast.alias):
            words.add(node.asname or node.name)
        elif isinstance(node, ast.keyword) and node.arg:
            words.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words.add(node.value)
    return {w.lower() for w in words}


def method_hits(words: set[str]) -> list[str]:
    """The code words that contain a method word as a whole word (letters and digits delimit words; '_', '.', '/',
    ' ' and the like separate them, so 'ride' matches 'read_ride_checkpoint' but not 'override')."""
    patterns = [re.compile(rf"(?<![a-z0-9]){re.escape(m)}(?![a-z0-9])") for m in METHOD_WORDS]
    return sorted(w for w in words if any(p.search(w) for p in patterns))


def test_method_word_matching_is_by_whole_word():
    assert method_hits({"override", "strider", "cascade", "balance"}) == []
    assert method_hits({"read_ride_checkpoint", "BalPoE/SADE/RIDE".lower(), "loss.tau_min", "sade"}) == \
        ["balpoe/sade/ride", "loss.tau_min", "read_ride_checkpoint", "sade"]
    assert code_words('"""the SADE aggregation"""\nx = 1  # ride\n') == {"x"}


ENGINE = sorted([p for p in MODULES if layer_of(p) in ENGINE_LAYERS]
                + [PACKAGE / "cli" / f"{name}.py" for name in GENERIC_CLI] + [ROOT / name for name in SCRIPTS])


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_engine_names_no_method(path):
    """Methods reach the engine only through the registries (longtail/registry.py) and the hooks of core/hooks.py."""
    hits = method_hits(code_words(path.read_text()))
    assert not hits, f"{path.relative_to(ROOT)} names {hits}"
