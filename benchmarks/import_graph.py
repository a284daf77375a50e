"""The import graph of genflow/ and recipes/ (read from the sources, lazy imports inside functions included):
checks the layering rules and prints, for every module under genflow/, the recipes that use it.

    python benchmarks/import_graph.py            # rules, then the table
    python benchmarks/import_graph.py --dot      # the package-level graph in Graphviz dot

Rules (tests/test_layers.py asserts the same): no module imports a module of a higher layer, there is
no import circle between modules, `genflow/` never imports `genflow_recipes`, and a sampler never
imports a network (`genflow.models`).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"genflow": ROOT / "genflow", "genflow_recipes": ROOT / "recipes"}
# Layers from the bottom; a module may import its own layer's modules (without circles) and lower layers'.
LAYERS = [
    ["genflow.errors", "genflow"],
    ["genflow.extras", "genflow.config", "genflow.lazy", "genflow.threads"],
    ["genflow.data", "genflow.models", "genflow.objectives", "genflow.metrics", "genflow.ising"],
    ["genflow.samplers"],
    ["genflow.engine"],
    ["genflow.export", "genflow.cli"],
    ["genflow_recipes"],
]


def modules() -> dict[str, Path]:
    found = {}
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _absolute(node: ast.ImportFrom, package: str) -> str:
    base = node.module or ""
    if node.level:
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}".strip(".")
    return base


def _existing(target: str, known: dict[str, Path]) -> str:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target


def reexports(known: dict[str, Path]) -> dict[str, dict[str, str]]:
    """Package -> {name it re-exports: the module that defines it}: its `from .x import name` lines, a
    `lazy_exports(__name__, {...})` call, or genflow.engine's `_EXPORTS` table."""
    tables: dict[str, dict[str, str]] = {}
    for name, path in known.items():
        if path.name != "__init__.py":
            continue
        table = tables.setdefault(name, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                source = _existing(_absolute(node, name), known)
                for alias in node.names:
                    table[alias.asname or alias.name] = source
            lazy = None
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "lazy_exports":
                lazy, prefix = node.value.args[1], name
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "_EXPORTS" for t in node.targets):
                lazy, prefix = node.value, name + "."
            if isinstance(lazy, ast.Dict):
                for key, value in zip(lazy.keys, lazy.values):
                    table[key.value] = _existing(f"{prefix}{value.value}", known)
    return tables


def imports_of(name: str, path: Path, known: dict[str, Path], tables: dict[str, dict[str, str]]) -> set[str]:
    """The project modules `name` imports (anywhere in its file, lazy imports and lazy re-exports included);
    a name imported from a package counts as an import of the module that defines it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(name, path)
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(_existing(alias.name, known) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            for alias in node.names:
                if f"{base}.{alias.name}" in known:
                    targets.add(f"{base}.{alias.name}")
                elif base in tables and alias.name in tables[base] and base != name:
                    targets.add(tables[base][alias.name])
                else:
                    targets.add(_existing(base, known))
    if name in tables:  # a package's re-exports, lazy ones included, are its imports
        targets.update(tables[name].values())
    return {t for t in targets if t and t != name}


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for index, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    return best


def graph() -> dict[str, set[str]]:
    known = modules()
    tables = reexports(known)
    return {name: imports_of(name, path, known, tables) for name, path in known.items()}


def problems(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(source):
                found.append(f"{source} imports {target} (a higher layer)")
            if source.startswith("genflow.samplers") and target.startswith("genflow.models"):
                found.append(f"{source} imports {target} (a sampler never sees a network)")
    found += [f"import circle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component) + [sorted(component)[0]])

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def users_by_recipe(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """genflow module -> the recipes (genflow_recipes.<package>) that reach it through their imports."""
    reach: dict[str, set[str]] = {}
    packages = {m for m, path in modules().items() if path.name == "__init__.py"}

    def closure(module: str) -> set[str]:
        if module not in reach:
            reach[module] = set()
            todo = list(edges.get(module, ()))
            while todo:
                m = todo.pop()
                if m not in reach[module]:
                    reach[module].add(m)
                    if m not in packages:
                        todo.extend(edges.get(m, ()))
        return reach[module]

    users: dict[str, set[str]] = defaultdict(set)
    for module in edges:
        if module.startswith("genflow_recipes.") and module.count(".") >= 1:
            recipe = module.split(".")[1]
            for target in closure(module):
                if target.startswith("genflow.") or target == "genflow":
                    users[target].add(recipe)
    return users


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dot", action="store_true", help="print the package-level graph in Graphviz dot")
    args = parser.parse_args()
    edges = graph()
    if args.dot:
        def package(m):
            return ".".join(m.split(".")[:2])
        pairs = sorted({(package(s), package(t)) for s, ts in edges.items() for t in ts if package(s) != package(t)})
        print("digraph imports {\n" + "\n".join(f'  "{s}" -> "{t}";' for s, t in pairs) + "\n}")
        return 0
    found = problems(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports between them: "
          + ("no circle, no import from a lower layer to a higher one" if not found else f"{len(found)} problem(s)"))
    for problem in found:
        print("  " + problem)
    users = users_by_recipe(edges)
    print("\n| module | recipes that use it |\n|---|---|")
    for module in sorted(m for m in edges if m.startswith("genflow")):
        print(f"| `{module}` | {', '.join(sorted(users.get(module, ()))) or '-'} |")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
