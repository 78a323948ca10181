"""`pip install .` gives importable packages and the console command; requirements agree."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from conftest import REPO, TIMEOUT


def requirement_names(lines):
    names = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name = re.split(r"[=<>!~\[ ]", line, maxsplit=1)[0].lower()
            names[name] = line.replace(" ", "")
    return names


def test_requirements_txt_and_pyproject_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    from_toml = requirement_names(project["dependencies"])
    from_txt = requirement_names((REPO / "requirements.txt").read_text().splitlines())
    assert from_toml == from_txt
    assert from_toml["torch"] == "torch==2.13.0"  # unpinned torch pulls GBs of CUDA wheels


@pytest.mark.slow
def test_wheel_installs_packages_and_console_command(tmp_path):
    # built from a copy: setuptools writes build/ and *.egg-info/ next to the sources
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "data", "report", "*.egg-info", "__pycache__", ".pytest_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(source)], capture_output=True, text=True, timeout=TIMEOUT)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("probes/__init__.py", "probes/pair_scan.py", "gradient_probes/cli.py",
                   "gradient_probes/_app/models/__init__.py", "gradient_probes/_app/models/cnn.py",
                   "gradient_probes/_app/experiments/mnist.py", "gradient_probes/_app/train.py"):
        assert module in names, module
    top_level = {n.split("/")[0] for n in names if "/" in n and ".dist-info" not in n}
    assert top_level == {"probes", "gradient_probes"}  # no generic names: models, experiments, train...
    assert not any(n.startswith("tests/") or "/tests/" in n for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gradient-probes-train = gradient_probes.cli:train" in zipfile.ZipFile(wheel).read(entry_points).decode()
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=TIMEOUT)
    assert install.returncode == 0, install.stderr
    users = tmp_path / "users_project"  # a user's own package called `models`, after the install on the path
    (users / "models").mkdir(parents=True)
    (users / "models" / "__init__.py").write_text("WHOSE = 'the user'\n")
    check = subprocess.run([sys.executable, "-c", "import probes, models; print(models.WHOSE, len(probes.__all__))"],
                           capture_output=True, text=True, cwd=tmp_path,
                           env={"PYTHONPATH": f"{target}{os.pathsep}{users}"}, timeout=TIMEOUT)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("the user")
    script = target / "bin" / "gradient-probes-train"
    usage = subprocess.run([sys.executable, str(script), "--model", "nope"], capture_output=True, text=True,
                           cwd=tmp_path, env={"PYTHONPATH": str(target)}, timeout=TIMEOUT)
    assert usage.returncode == 2 and "invalid choice: 'nope'" in usage.stderr  # the same CLI as train.py
    build_cnn = subprocess.run([sys.executable, "-c", "import sys; from gradient_probes import cli; cli._application(); "
                                "import models; print(type(models.build('cnn')).__name__)"],
                               capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target)},
                               timeout=TIMEOUT)
    assert build_cnn.returncode == 0 and build_cnn.stdout.startswith("KerasCNN"), build_cnn.stderr
