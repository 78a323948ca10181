"""The README's plain-loop example runs as written (with a temporary log directory)."""
import re

from conftest import REPO, read_events


def test_readme_plain_loop_example_runs(tmp_path):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("A complete plain loop"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "probes.watch(" in code
    code = code.replace('"runs/mine"', repr(str(tmp_path))).replace("range(500)", "range(60)")
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    monitor = namespace["monitor"]
    assert monitor.global_step == 60 and monitor.model is None
    scalars = read_events(tmp_path).Tags()["scalars"]
    assert "train/loss" in scalars and "weight_change/0.weight" in scalars
