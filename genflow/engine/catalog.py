"""The installed recipes, listed without importing them (or torch).

`genflow recipes` only needs each recipe's name, summary, default YAML and aliases, yet importing a
recipe module imports torch and the model code (seconds). So each `genflow.recipes` entry point's
module is parsed instead: the recipe class's `summary`, `default_config` and `aliases` are read
from literal assignments in the class body or in a base class's (the MRO is computed from the
parsed sources, so `genflow.engine.recipe.Recipe` supplies the default `aliases = ()`).
`default_config` may be a `Path(__file__)...` expression: `.with_name(...)`, `.with_suffix(...)`,
`.parent`, `/ "x.yaml"`. A recipe written any other way (a computed summary, a decorated class, an
`__init_subclass__` that sets these attributes, a base class from a compiled module) is imported
instead, so the catalogue is always what importing gives.
"""

from __future__ import annotations

import ast
import importlib
import sys
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

__all__ = ["RecipeEntry", "recipe_entries"]

_GROUP = "genflow.recipes"
# Recipe attribute -> its value where no class in the MRO sets it
_DEFAULTS: dict[str, Any] = {"summary": "", "default_config": None, "aliases": ()}
_PATH_METHODS = {"with_name", "with_suffix", "joinpath", "resolve", "absolute"}


@dataclass(frozen=True)
class RecipeEntry:
    """One installed recipe as `genflow recipes` lists it."""

    name: str  # the entry-point name: what `genflow train NAME` takes
    module: str  # e.g. "genflow_recipes.digit4"
    class_name: str  # e.g. "Digit4Recipe"
    summary: str
    default_config: Path | None  # the recipe's default YAML
    aliases: tuple[str, ...]  # other names `genflow train` accepts

    def load(self) -> type:
        """The recipe class (this imports the recipe module, and so torch)."""
        return getattr(importlib.import_module(self.module), self.class_name)


def recipe_entries() -> list[RecipeEntry]:
    """Every recipe of the `genflow.recipes` entry-point group, sorted by name.

    A later entry point of the same name replaces an earlier one, as in
    `genflow.engine.recipe.available_recipes`.
    """
    found: dict[str, RecipeEntry] = {}
    sources = _Sources()
    for ep in entry_points(group=_GROUP):
        found[ep.name] = _parsed_entry(ep, sources) or _imported_entry(ep)
    return [found[name] for name in sorted(found)]


def _imported_entry(ep) -> RecipeEntry:
    cls = ep.load()
    values = {attr: getattr(cls, attr, default) for attr, default in _DEFAULTS.items()}
    return _entry(ep, values)


def _parsed_entry(ep, sources: _Sources) -> RecipeEntry | None:
    if not ep.attr or "." in ep.attr:
        return None
    try:
        mro = sources.mro(f"{ep.module}.{ep.attr}")
        if any(_hook_sets_attributes(cls.node) for cls in mro):
            return None
        values = {attr: _class_attribute(mro, attr, default) for attr, default in _DEFAULTS.items()}
    except (_Unresolved, RecursionError):
        return None
    return _entry(ep, values)


def _entry(ep, values: dict[str, Any]) -> RecipeEntry:
    default_config = values["default_config"]
    return RecipeEntry(name=ep.name, module=ep.module, class_name=ep.attr, summary=values["summary"],
                       default_config=None if default_config is None else Path(default_config),
                       aliases=tuple(values["aliases"]))


class _Unresolved(Exception):
    """The source does not say the value plainly: import the module instead."""


@dataclass(eq=False)
class _Module:
    name: str
    file: Path
    tree: ast.Module
    imports: dict[str, str]  # local name -> what it names ("pathlib.Path", "genflow.engine.recipe.Recipe")


@dataclass(eq=False)
class _Class:
    module: _Module
    node: ast.ClassDef


class _Sources:
    """Parsed modules and their classes, each parsed once per catalogue."""

    def __init__(self) -> None:
        self._modules: dict[str, _Module] = {}
        self._classes: dict[tuple[str, str], _Class] = {}

    def module(self, name: str) -> _Module:
        if name not in self._modules:
            spec = _find_spec(name)
            if spec is None or not spec.has_location or not (spec.origin or "").endswith(".py"):
                raise _Unresolved(name)
            file = Path(spec.origin)
            try:
                tree = ast.parse(file.read_bytes(), filename=str(file))
            except (OSError, SyntaxError, ValueError) as exc:
                raise _Unresolved(name) from exc
            self._modules[name] = _Module(name, file, tree, _imports(tree, spec.parent))
        return self._modules[name]

    def cls(self, qualified: str) -> _Class:
        """The class `module.Name`, followed through re-exports (`from .base import Name`)."""
        module, name = qualified.rsplit(".", 1)
        mod = self.module(module)
        if (module, name) not in self._classes:
            nodes = [n for n in mod.tree.body if isinstance(n, ast.ClassDef) and n.name == name]
            if not nodes:
                if "." in mod.imports.get(name, ""):
                    return self.cls(mod.imports[name])
                raise _Unresolved(qualified)
            node = nodes[-1]
            if node.decorator_list or node.keywords or _rebound(mod.tree.body, name, allow=node):
                raise _Unresolved(qualified)  # a decorator or metaclass may set attributes
            self._classes[(module, name)] = _Class(mod, node)
        return self._classes[(module, name)]

    def mro(self, qualified: str, _seen: tuple[str, ...] = ()) -> list[_Class]:
        """The class's method resolution order (C3), as Python computes it, from the sources."""
        if qualified in _seen:
            raise _Unresolved(f"inheritance cycle at {qualified}")
        cls = self.cls(qualified)
        bases = [b for b in (_base_name(node, cls.module) for node in cls.node.bases) if b != "builtins.object"]
        base_mros = [self.mro(base, (*_seen, qualified)) for base in bases]
        return [cls, *_c3_merge([*base_mros, [self.cls(base) for base in bases]])]


def _find_spec(name: str) -> ModuleSpec | None:
    """`importlib.util.find_spec` without running the parent packages' `__init__` (which may import torch)."""
    if name in sys.modules:
        return getattr(sys.modules[name], "__spec__", None)
    parent = name.rpartition(".")[0]
    path = None
    if parent:
        parent_spec = _find_spec(parent)
        if parent_spec is None or parent_spec.submodule_search_locations is None:
            return None
        path = list(parent_spec.submodule_search_locations)
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        spec = find(name, path) if find else None
        if spec is not None:
            return spec
    return None


def _c3_merge(sequences: list[list[_Class]]) -> list[_Class]:
    sequences = [list(s) for s in sequences if s]
    merged: list[_Class] = []
    while sequences:
        for seq in sequences:
            head = seq[0]
            if not any(head in s[1:] for s in sequences):
                break
        else:
            raise _Unresolved("inconsistent MRO")
        merged.append(head)
        sequences = [s[1:] if s[0] is head else s for s in sequences]
        sequences = [s for s in sequences if s]
    return merged


def _base_name(base: ast.expr, module: _Module) -> str:
    """Qualified name of a base class expression (`Recipe` -> `genflow.engine.recipe.Recipe`)."""
    if isinstance(base, ast.Name):
        if any(isinstance(n, ast.ClassDef) and n.name == base.id for n in module.tree.body):
            return f"{module.name}.{base.id}"
        if base.id in module.imports:
            return module.imports[base.id]
        if base.id == "object":
            return "builtins.object"
    elif isinstance(base, ast.Attribute):
        parts = []
        node: ast.expr = base
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in module.imports:
            return ".".join([module.imports[node.id], *reversed(parts)])
    raise _Unresolved(ast.unparse(base))


def _imports(tree: ast.Module, package: str | None) -> dict[str, str]:
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = (package or "").rsplit(".", node.level - 1)[0] if node.level > 1 else (package or "")
                source = f"{base}.{source}".strip(".")
            for alias in node.names:
                names[alias.asname or alias.name] = f"{source}.{alias.name}"
    return names


def _class_attribute(mro: list[_Class], attr: str, default: Any) -> Any:
    for cls in mro:
        assigned = _assignments(cls.node.body, attr)
        if assigned is not None:
            return _evaluate(assigned, cls.module, cls.node.body)
    return default


def _hook_sets_attributes(node: ast.ClassDef) -> bool:
    """Whether the class's `__init_subclass__` may set a catalogued attribute (`cls.summary = ...`, `setattr`)."""
    for stmt in node.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "__init_subclass__":
            for sub in ast.walk(stmt):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and sub.attr in _DEFAULTS:
                    return True
                if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "setattr":
                    return True
    return False


def _assignments(body: list[ast.stmt], name: str) -> ast.expr | None:
    """The value of the last plain `name = value` in `body`; unresolved if `name` is bound otherwise."""
    value = None
    for stmt in body:
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            if any(t.id == name for t in stmt.targets):
                value = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
            if stmt.value is not None:
                value = stmt.value
        elif _rebound([stmt], name):
            raise _Unresolved(name)
    return value


def _rebound(body: list[ast.stmt], name: str, allow: ast.stmt | None = None) -> bool:
    """Whether a statement of `body` (other than `allow`) binds `name` in some other way (if, for, import, def...)."""
    for stmt in body:
        if stmt is allow:
            continue
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if stmt.name == name:
                return True
            continue  # names bound inside are local to it
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in stmt.names):
                return True
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, (ast.Store, ast.Del)):
                return True
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                return True
    return False


def _evaluate(node: ast.expr, module: _Module, class_body: list[ast.stmt] | None = None, depth: int = 0) -> Any:
    """A literal, a name bound to one, or a `Path(__file__)` expression; anything else is unresolved."""
    if depth > 20:
        raise _Unresolved("too deep")

    def evaluate(child: ast.expr) -> Any:
        return _evaluate(child, module, class_body, depth + 1)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [evaluate(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {evaluate(k): evaluate(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name):
        if node.id == "__file__":
            return str(module.file)
        if class_body is not None:
            value = _assignments(class_body, node.id)
            if value is not None:
                raise _Unresolved(node.id)  # a class-body name used in the class body: rare, import instead
        value = _assignments(module.tree.body, node.id)
        if value is None:
            raise _Unresolved(node.id)  # imported, or not a plain assignment
        return _evaluate(value, module, None, depth + 1)
    if isinstance(node, ast.Call) and not node.keywords:
        func = node.func
        args = [evaluate(a) for a in node.args]
        if _qualified(func, module) == "pathlib.Path":
            return Path(*args)
        if isinstance(func, ast.Attribute) and func.attr in _PATH_METHODS:
            target = evaluate(func.value)
            if isinstance(target, Path):
                return getattr(target, func.attr)(*args)
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        target = evaluate(node.value)
        if isinstance(target, Path):
            return target.parent
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(left, Path) and isinstance(right, (str, Path)):
            return left / right
    raise _Unresolved(ast.unparse(node))


def _qualified(node: ast.expr, module: _Module) -> str | None:
    if isinstance(node, ast.Name):
        return module.imports.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module.imports:
        return f"{module.imports[node.value.id]}.{node.attr}"
    return None
