"""The installed package (issue 17): a non-editable wheel holds exactly one top-level name, `longtail`, plus the
shipped configs and official lists as package data; installed into a fresh environment and run from an unrelated
folder, it trains the Fashion-MNIST demo config by name and reads the official lists with their checksums."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

CHECK_LISTS = '''
import warnings
from pathlib import Path
import longtail
from longtail.data_loader.image_lists import read_image_list
from longtail.data_loader.official_lists import official_digests
from longtail.utils.resources import find_shipped, shipped_dir
assert "site-packages" in longtail.__file__, longtail.__file__
assert shipped_dir("data_txt").parent == Path(longtail.__file__).parent and len(official_digests()) > 30
with warnings.catch_warnings():
    warnings.simplefilter("error")  # the shipped official list matches its SHA-256: no warning
    paths, labels = read_image_list(find_shipped("data_txt/ImageNet_LT/ImageNet_LT_test.txt", "data_txt"))
assert len(paths) == 50000 and labels.max() == 999
changed = Path("ImageNet_LT_test.txt")
changed.write_text("train/n01440764/x.JPEG 0\\n")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    read_image_list(changed)  # a file with an official name but other content is flagged
assert any("differs from the official" in str(w.message) for w in caught)
print("lists ok")
'''


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the repository (the checkout itself stays clean)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "saved", "results", "build", "data",
                                                                "__pycache__", "*.egg-info", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True, text=True)
    return next((work / "dist").glob("longtail_experts-*.whl"))


def test_the_wheel_installs_one_top_level_name_and_the_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if ".dist-info" not in n.split("/")[0]}
    assert tops == {"longtail"}
    assert "longtail/configs/fmnist_ir100/balpoe.json" in names
    assert "longtail/data_txt/MANIFEST.sha256" in names and "longtail/data_txt/ImageNet_LT/ImageNet_LT_test.txt" in names
    assert not any(n.startswith(("longtail/tools", "tools/", "benchmarks/")) for n in names)  # maintenance tools stay out


def test_installed_wheel_trains_by_config_name_and_checks_the_official_lists(wheel, tmp_path, fmnist_dir):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, ...) come from this environment; its own editable install of the project does not
    # (a directory named in a .pth file is added to sys.path, but its .pth files are not executed)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([str(venv / "bin" / "lt-train"), "-c", "fmnist_ir100/balpoe.json", "--epochs", "1",
                          "--limit_batches", "2", "--limit_val_batches", "1", "--data_dir", str(fmnist_dir),
                          "--set", "data_loader.args.imb_factor=0.1",  # the tiny fixture has 60 images per class
                          "-d", "cpu", "--quiet", "--run_dir", "run"], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (elsewhere / "run" / "last.pth").is_file()
    evaluated = subprocess.run([str(venv / "bin" / "lt-test-all"), "-r", "run", "-d", "cpu", "--priors", "uniform"],
                               cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0 and "uniform" in evaluated.stdout, evaluated.stderr[-3000:]
    lists = subprocess.run([str(venv / "bin" / "python"), "-c", CHECK_LISTS], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=600)
    assert lists.returncode == 0 and "lists ok" in lists.stdout, lists.stderr[-3000:]
