"""Every parity fixture has a generator that pins its commits; the generators' checkout helper does what it says.

Nothing here runs the original code (the generators need the original repositories; see
tests/parity/generators/README.md): the checks read the generators' sources, and exercise ``_checkout.py`` on a
throw-away git repository.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PARITY = Path(__file__).resolve().parent
GENERATORS = PARITY / "generators"
FIXTURES = PARITY / "fixtures"
README = (GENERATORS / "README.md").read_text()
FIXTURE_IN_FIRST_LINE = re.compile(r"^Generate tests/parity/fixtures/([\w.-]+\.json)\b")
COMMIT = re.compile(r"\b[0-9a-f]{40}\b")


def load_checkout_module():
    spec = importlib.util.spec_from_file_location("parity_checkout", GENERATORS / "_checkout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def generator_fixtures() -> dict[str, str]:
    """generator file name -> fixture its docstring's first line names ('' when it names none)."""
    out = {}
    for path in sorted(GENERATORS.glob("gen_*.py")):
        match = FIXTURE_IN_FIRST_LINE.match(docstring(path))
        out[path.name] = match.group(1) if match else ""
    return out


def test_every_fixture_has_exactly_one_generator() -> None:
    """Each fixtures/*.json is named by the first docstring line of exactly one generators/gen_*.py, and every
    generator names a fixture that exists."""
    named = generator_fixtures()
    assert all(named.values()), {g: f for g, f in named.items() if not f}
    for fixture in sorted(p.name for p in FIXTURES.glob("*.json")):
        writers = [g for g, f in named.items() if f == fixture]
        assert len(writers) == 1, f"{fixture}: written by {writers or 'no generator'}"
    missing = {g: f for g, f in named.items() if not (FIXTURES / f).exists()}
    assert not missing, f"generators name fixtures that do not exist: {missing}"


def test_every_pinned_commit_is_in_the_readme() -> None:
    """Every full commit hash in a generator (or the shared helper) and every generator's name appear in the README;
    every generator pins at least one commit unless it takes the checkout as an argument."""
    for path in sorted(GENERATORS.glob("*.py")):
        for commit in set(COMMIT.findall(path.read_text())):
            assert commit in README, f"{path.name} pins {commit}, which tests/parity/generators/README.md does not list"
    for name in generator_fixtures():
        assert f"`{name}`" in README, f"{name} is not described in tests/parity/generators/README.md"
    for path in sorted(GENERATORS.glob("gen_*.py")):
        source = path.read_text()
        if "import _checkout" in source:
            assert COMMIT.search(source), f"{path.name} uses the checkout helper but pins no commit"


def test_parity_tests_name_their_generator() -> None:
    """Each test_parity_*.py docstring names an existing generator, and no longer the scripts that were never
    committed."""
    for path in sorted(PARITY.glob("test_parity_*.py")):
        doc = docstring(path)
        names = re.findall(r"\bgen_[\w]+\.py\b", doc)
        assert names, f"{path.name}: its docstring names no generator"
        assert all((GENERATORS / name).exists() for name in names), (path.name, names)
        assert "/work/parity/harness" not in doc


def test_fixture_layout_is_what_the_generators_write() -> None:
    """``_checkout.dumps_fixture`` reproduces every committed fixture byte for byte from its parsed JSON (so a
    regenerated fixture differs from the committed one only where a value does)."""
    checkout = load_checkout_module()
    for path in sorted(FIXTURES.glob("*.json")):
        text = path.read_text()
        if checkout.dumps_fixture(json.loads(text)) != text:
            pytest.fail(f"{path.name}: not in the generators' layout (json.dumps indent=1, number lists inline)")
    assert checkout.dumps_fixture({"a": [1, -2.5, float("nan")], "b": [[True, False]]}) == (
        '{\n "a": [1, -2.5, NaN],\n "b": [\n  [\n   true,\n   false\n  ]\n ]\n}\n')


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tiny_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A throw-away repository with two commits: (path, first commit, second commit)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "origin"
    repo.mkdir()
    git("init", "--quiet", cwd=repo)
    git("config", "user.email", "t@example.com", cwd=repo)
    git("config", "user.name", "t", cwd=repo)
    (repo / "model").mkdir()
    (repo / "model" / "__init__.py").write_text("")
    (repo / "model" / "loss.py").write_text("VALUE = 1\n")
    (repo / "big.txt").write_text("data that the sparse checkout leaves out\n")
    git("add", ".", cwd=repo)
    git("commit", "--quiet", "-m", "one", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    (repo / "model" / "loss.py").write_text("VALUE = 2\n")
    git("commit", "--quiet", "-am", "two", cwd=repo)
    return repo, first, git("rev-parse", "HEAD", cwd=repo)


def test_checkout_is_the_pinned_commit_sparse_and_outside(tiny_repo, tmp_path: Path) -> None:
    """``checkout`` gives the PINNED commit (not the newest), only *.py / *.json, reuses it on the next call, and
    ``import_original`` imports from it without leaving its module names behind."""
    checkout = load_checkout_module()
    repo, first, second = tiny_repo
    root = checkout.checkout("someone/tiny", first, str(repo), tmp_path / "scratch")
    assert git("rev-parse", "HEAD", cwd=root) == first and first != second
    assert (root / "model" / "loss.py").read_text() == "VALUE = 1\n"
    assert not (root / "big.txt").exists()
    assert checkout.checkout("someone/tiny", first, str(repo), tmp_path / "scratch") == root  # reused
    assert checkout.import_original(root, "model.loss").VALUE == 1
    assert "model.loss" not in sys.modules
    (root / "model" / "loss.py").write_text("VALUE = 3\n")
    with pytest.raises(SystemExit, match="local changes"):
        checkout.checkout("someone/tiny", first, str(repo), tmp_path / "scratch")


def test_checkout_refusals(tiny_repo, tmp_path: Path) -> None:
    """A commit the source lacks, a short hash and a scratch folder inside the project stop with a clear message
    (and leave no half-made checkout)."""
    checkout = load_checkout_module()
    repo, _, _ = tiny_repo
    with pytest.raises(SystemExit, match="does not contain someone/tiny@" + "1" * 40):
        checkout.checkout("someone/tiny", "1" * 40, str(repo), tmp_path / "scratch")
    assert not any((tmp_path / "scratch").iterdir())
    with pytest.raises(SystemExit, match="not a full 40-hex commit"):
        checkout.checkout("someone/tiny", "abc123", str(repo), tmp_path / "scratch")
    with pytest.raises(SystemExit, match="inside the project"):
        checkout.checkout("someone/tiny", "1" * 40, str(repo), checkout.PROJECT_ROOT / "scratch")


def test_repo_sources(tmp_path: Path) -> None:
    """--repo-path beats --mirrors (layouts owner+name/repo, owner+name, owner/name), GitHub is the fallback, and a
    bare path is accepted only for a one-repository generator."""
    checkout = load_checkout_module()
    pinned = {"a/one": "0" * 40, "b/two": "1" * 40, "c/three": "2" * 40}
    (tmp_path / "a+one" / "repo").mkdir(parents=True)
    (tmp_path / "b" / "two").mkdir(parents=True)
    explicit = tmp_path / "elsewhere"
    args = checkout.parser("Generate x.", "x.json", pinned).parse_args(
        ["--mirrors", str(tmp_path), "--repo-path", f"b/two={explicit}"])
    assert checkout.repo_sources(args, pinned) == {"a/one": str((tmp_path / "a+one" / "repo").resolve()),
                                                   "b/two": str(explicit.resolve()),
                                                   "c/three": "https://github.com/c/three"}
    args = checkout.parser("Generate x.", "x.json", pinned).parse_args(["--repo-path", str(explicit)])
    with pytest.raises(SystemExit, match="OWNER/NAME=PATH"):
        checkout.repo_sources(args, pinned)
    single = {"a/one": "0" * 40}
    args = checkout.parser("Generate x.", "x.json", single).parse_args(["--repo-path", str(explicit)])
    assert checkout.repo_sources(args, single) == {"a/one": str(explicit.resolve())}
