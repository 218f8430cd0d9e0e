"""The house rules DESIGN.md states, checked on the source: packaging covers every package, the layers use the runtime
through its public names, no import loops in the runtime, files and functions of a readable size."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("runtime", "engines", "export", "bench")
RUNTIME_WINGS = ("moai_edge.runtime.experts", "moai_edge.runtime.decoding", "moai_edge.runtime.caption",
                 "moai_edge.runtime.serve")  # packages whose __all__ is public besides moai_edge.runtime's
MAX_RUNTIME_FILE_LINES = 300
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["moai_edge", *parts])


def sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def imports(path: Path, *, top_level_only: bool) -> list[tuple[str, list[str]]]:
    """(module imported from, names) of each import, relative imports resolved. `top_level_only`: only those at the
    module's level (not inside a function), those for type checkers included: a loop of types is a loop of ideas."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []

    def visit(node):
        if top_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((base, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_pyproject_lists_every_package_and_only_those():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p) for p in sources(*LAYERS) if p.name == "__init__.py"}
    assert listed == on_disk, {"not listed": sorted(on_disk - listed), "not on disk": sorted(listed - on_disk)}


def public_names(module: str) -> set[str]:
    return set(getattr(importlib.import_module(module), "__all__", ()))


@pytest.mark.parametrize("layer, allowed", [("export", ("moai_edge.runtime",)),
                                            ("bench", ("moai_edge.runtime", *RUNTIME_WINGS)),
                                            ("examples", ("moai_edge.runtime",))])
def test_other_layers_use_the_runtime_through_its_public_names(layer, allowed):
    found = []
    for path in sources(layer):
        for module, names in imports(path, top_level_only=False):
            if not module.startswith("moai_edge.runtime"):
                continue
            if module not in allowed:
                found.append(f"{path.relative_to(ROOT)}: from {module} import {', '.join(names)}")
            elif unknown := sorted(set(names) - public_names(module)):
                found.append(f"{path.relative_to(ROOT)}: {unknown} are not in {module}.__all__")
    assert not found, "\n".join(found)


def test_no_import_loops_in_the_runtime():
    modules = {module_name(p): p for p in sources("runtime")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for module, names in imports(path, top_level_only=True):
            subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            targets |= subs or ({module} if module in modules else set())
        edges[name] = targets - {name}
    loops = strongly_connected(edges)
    assert not loops, loops


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one module."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_loop_finder_finds_a_loop():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_runtime_files_and_every_function_stay_readable():
    long_files = [f"{p.relative_to(ROOT)}: {n} lines" for p in sources("runtime")
                  if (n := len(p.read_text().splitlines())) > MAX_RUNTIME_FILE_LINES]
    long_functions = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
                      for p in sources(*LAYERS) for node in ast.walk(ast.parse(p.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long_files and not long_functions, long_files + long_functions


def test_every_runtime_module_imports_first_in_a_fresh_interpreter():
    """A package's __init__ importing a sibling that imports the package back fails only when that module is the
    first one imported: each module is imported first, in a process of its own."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    def first_import(name: str) -> str | None:
        out = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=120)
        return None if out.returncode == 0 else f"{name}: {out.stderr.strip().splitlines()[-1]}"

    names = sorted(module_name(p) for p in sources("runtime"))
    with ThreadPoolExecutor(4) as pool:
        failed = [f for f in pool.map(first_import, names) if f]
    assert not failed, failed
