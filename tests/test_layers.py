"""The layout's rules, read from the sources (benchmarks/import_graph.py): no import circle between modules, no
module importing a higher layer, `genflow/` never importing a recipe, and no sampler importing a network."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "import_graph.py"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_import_graph_keeps_the_layers_and_has_no_circle():
    graph = _import_graph()
    edges = graph.graph()
    assert "genflow.engine.trainer" in edges and "genflow_recipes.namo.recipe" in edges
    assert graph.problems(edges) == []


def test_the_checker_sees_a_circle_an_upward_import_and_a_sampler_that_sees_a_network():
    graph = _import_graph()
    edges = {"genflow.data.shards": {"genflow.engine.trainer"}, "genflow.engine.trainer": {"genflow.data.shards"},
             "genflow.samplers.ode": {"genflow.models.dit"}, "genflow.models.dit": set(),
             "genflow.metrics.chamfer": {"genflow_recipes.namo.metrics"}, "genflow_recipes.namo.metrics": set()}
    found = graph.problems(edges)
    assert "genflow.data.shards imports genflow.engine.trainer (a higher layer)" in found
    assert "genflow.metrics.chamfer imports genflow_recipes.namo.metrics (a higher layer)" in found
    assert "genflow.samplers.ode imports genflow.models.dit (a sampler never sees a network)" in found
    assert any(p.startswith("import circle: genflow.data.shards -> genflow.engine.trainer") for p in found)


BENCHMARKS = sorted(SCRIPT.parent.rglob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: str(p.relative_to(SCRIPT.parent)))
def test_every_benchmark_imports(path, monkeypatch):
    """Benchmarks are not run in CI, but a moved module must not leave one that cannot even start."""
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: siblings import each other
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # as a script is: its dataclasses look their module up there
    spec.loader.exec_module(module)  # module level only: each runs its work under `if __name__ == "__main__"`
