"""`pip install .` gives importable packages and the console command; requirements agree."""
import re
import subprocess
import sys
import tomllib
import zipfile

from conftest import REPO


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


def test_wheel_installs_packages_and_console_command(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("probes/__init__.py", "probes/pair_scan.py", "models/__init__.py", "models/cnn.py",
                   "experiments/mnist.py", "train.py"):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gradient-probes-train = train:cli" in zipfile.ZipFile(wheel).read(entry_points).decode()
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    check = subprocess.run([sys.executable, "-c", "import probes, models, train; print(models.build('cnn').__class__.__name__,"
                            " len(probes.__all__)); train.parse_args(['--model', 'cnn'])"],
                           capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target)}, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("KerasCNN")
    script = target / "bin" / "gradient-probes-train"
    usage = subprocess.run([sys.executable, str(script), "--model", "nope"], capture_output=True, text=True,
                           cwd=tmp_path, env={"PYTHONPATH": str(target)}, timeout=120)
    assert usage.returncode == 2 and "invalid choice: 'nope'" in usage.stderr  # the same CLI as train.py
