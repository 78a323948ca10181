"""The model registry is the one list of models, and experiments/ imports without cycles.

models/registry.py holds one entry per model (constructor, recipe, help); experiments/studies.py
maps the same names to their studies. train.py's --model choices and help and report.py's runs
must be read from them, never kept as lists of their own.
"""
import ast
from pathlib import Path

import pytest
from torch import nn

import models
import report
import train
from experiments.studies import STUDIES, check
from experiments.study import Study
from models.registry import ModelSpec, Recipe, _by_name

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_every_model_has_one_entry_with_constructor_recipe_study_and_help():
    assert models.SPECS and set(STUDIES) == set(models.SPECS)
    for name, spec in models.SPECS.items():
        assert spec.name == name and callable(spec.constructor) and isinstance(spec.recipe, Recipe)
        assert spec.help.strip() and "\n" not in spec.help, name
        assert issubclass(STUDIES[name], Study), name
    # the older views are the registry's, not tables of their own
    assert models.MODELS == {name: spec.constructor for name, spec in models.SPECS.items()}
    assert models.RECIPES == {name: spec.recipe for name, spec in models.SPECS.items()}


def test_a_name_registered_twice_or_on_one_side_only_is_refused():
    spec = models.SPECS["cnn"]
    with pytest.raises(ValueError, match="'cnn' is registered twice"):
        _by_name(spec, spec)
    with pytest.raises(ImportError, match=r"no study for: \['new'\]"):
        check(STUDIES, [*models.SPECS, "new"])
    with pytest.raises(ImportError, match=r"no model for: \['old'\]"):
        check([*STUDIES, "old"], models.SPECS)


def test_train_help_and_choices_come_from_the_registry(monkeypatch, capsys):
    toy = ModelSpec("toy", lambda: nn.Linear(784, 10), Recipe("sgd", 0.5, 7, "logits", 3), help="a toy for this test")
    monkeypatch.setitem(models.SPECS, "toy", toy)
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--model {" + ",".join(sorted(models.SPECS)) + "}" in text
    for name, spec in models.SPECS.items():
        assert f"{name} {' '.join(spec.help.split())}" in text, name
    assert "batch size (default: cnn 128," in text and "toy 7)" in text and "toy 0.5)" in text
    assert train.parse_args(["--model", "toy"]).batch_size == 7  # the recipe's defaults, too


def test_report_runs_every_model_and_takes_its_figure_from_the_study():
    run_models = {argv[argv.index("--model") + 1] for argv in report.RUNS.values()}
    assert run_models == set(models.SPECS) and set(models.SPECS) <= set(report.RUNS)
    assert report.PLOTS == {name: STUDIES[name].figure for name in models.SPECS if STUDIES[name].figure}
    for budget in report.BUDGETS.values():
        assert set(budget) == set(report.RUNS)


def imports_of(path: Path) -> set:
    """The experiments modules ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: within experiments/
                base = "experiments" + (f".{base}" if base else "")
            names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from . import x` imports module x
        else:
            continue
        found.update(n.split(".")[1] for n in names if n.startswith("experiments."))
    return {n for n in found if (EXPERIMENTS / f"{n}.py").exists()}


def find_cycle(graph: dict):
    """One import cycle of ``graph`` (module -> modules it imports) as a list, or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module not in done:
            path.append(module)
            for target in sorted(graph[module]):
                cycle = visit(target)
                if cycle:
                    return cycle
            path.pop()
            done.add(module)
        return None

    return next((c for c in map(visit, sorted(graph)) if c), None)


def test_experiments_import_graph_has_no_cycle():
    graph = {p.stem: imports_of(p) - {p.stem} for p in EXPERIMENTS.glob("*.py") if p.stem != "__init__"}
    assert "study" in graph["studies"] and "run" in graph["study"]  # the graph is really read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert find_cycle({"study": {"vanishing"}, "vanishing": {"study"}}) == ["study", "vanishing", "study"]
