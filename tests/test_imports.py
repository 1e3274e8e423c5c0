"""The package's import graph has no cycles, and every module imports on its own.

Edges are read from the source with ``ast``: every ``import``/``from ... import`` that names a
``speechft`` module, at any depth (a function-level import that only hides a cycle still counts).
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. The
implicit import of a parent package's ``__init__`` is not an edge (every submodule would then be in
a cycle with a package that re-exports it).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def package_modules(src: Path = SRC, top: str = "speechft") -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` of every module under ``src/top``."""
    out = {}
    for path in sorted((src / top).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def import_graph(modules: dict[str, tuple[Path, bool]], top: str = "speechft") -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` for imports of ``top`` modules at any level."""

    def known(name: str) -> str | None:  # the longest prefix of a dotted name that is a module
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, (path, is_pkg) in modules.items():
        package = mod if is_pkg else mod.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names if a.name.split(".")[0] == top]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base_name = ".".join(base + ([node.module] if node.module else []))
                else:
                    base_name = node.module or ""
                if base_name.split(".")[0] != top:
                    continue
                targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in modules else known(base_name)
                           for a in node.names]
            for t in targets:
                if t is not None and t != mod:
                    edges.setdefault(t, node.lineno)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]], modules) -> str:
    src = SRC
    return "\n".join(f"  {a} -> {b}   ({modules[a][0].relative_to(src)}:{graph[a][b]})"
                     for a, b in zip(cycle, cycle[1:]))


def test_find_cycle_reports_the_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 3}}) == ["a", "b", "c", "a"]


def test_import_graph_reads_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "top"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import x\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import y\n    import top.sub\n")
    (pkg / "b.py").write_text("from .sub import a\nfrom top.sub.a import z\nimport os\n")
    mods = package_modules(tmp_path, "top")
    graph = import_graph(mods, "top")
    assert graph == {"top": {}, "top.sub": {"top.sub.a": 1}, "top.sub.a": {"top.b": 2, "top.sub": 3},
                     "top.b": {"top.sub.a": 1}}
    assert find_cycle(graph) == ["top.b", "top.sub.a", "top.b"]


def test_no_import_cycles():
    modules = package_modules()
    graph = import_graph(modules)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among speechft modules:\n" + describe(cycle, graph, modules)


def test_every_module_imports_on_its_own():
    """Each module is imported with no other speechft module loaded (third-party ones stay cached)."""
    names = sorted(package_modules())
    script = f"""
import importlib, json, sys, traceback
failed = {{}}
for name in {names!r}:
    for loaded in [m for m in sys.modules if m == "speechft" or m.startswith("speechft.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    failed = json.loads(res.stdout.strip().splitlines()[-1])
    assert not failed, "modules that do not import on their own:\n" + "\n".join(f"{k}:\n{v}" for k, v in failed.items())
