"""The package's imports flow one way: no cycles, no function-level imports of our own modules,
and no module over 300 lines (read from the source with ``ast``; nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "icl_mech"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 300


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _base(node: ast.ImportFrom, name: str, is_package: bool) -> str | None:
    """The module a ``from ... import`` names, relative levels resolved."""
    if node.level == 0:
        return node.module
    package = name.split(".") if is_package else name.split(".")[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def targets(node: ast.AST, name: str, is_package: bool, modules: set[str]) -> list[str]:
    """Our modules that an import statement loads: ``from a.b import c`` names ``a.b.c`` when
    that is a module (a submodule import), else ``a.b``."""
    if isinstance(node, ast.Import):
        found = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _base(node, name, is_package)
        if base is None:
            return []
        found = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            found.append(sub if sub in modules else base)
    else:
        return []
    return sorted({t for t in found if t == PACKAGE or t.startswith(PACKAGE + ".")})


def _imports(tree: ast.AST):
    """(node, inside a function) for every import statement of a module."""

    def visit(node: ast.AST, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            inner = in_function or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            yield from visit(child, inner)

    yield from visit(tree, False)


def _dynamic(tree: ast.AST) -> list[ast.Call]:
    """``importlib.import_module(...)`` / ``__import__(...)`` calls (they hide an import)."""
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                calls.append(node)
    return calls


def import_graph(root: Path = ROOT):
    """(edges: module -> its imported modules with line numbers, problems: function-level and
    dynamic imports of our modules as ``file:line`` strings)."""
    files = sources(root)
    modules = set(files)
    edges: dict[str, dict[str, int]] = {name: {} for name in files}
    problems = []
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        where = path.relative_to(root.parent)
        for node, in_function in _imports(tree):
            found = targets(node, name, is_package, modules)
            for target in found:
                edges[name].setdefault(target, node.lineno)
            if found and in_function:
                problems.append(f"{where}:{node.lineno}: imports {', '.join(found)} in a function")
        for call in _dynamic(tree):
            problems.append(f"{where}:{call.lineno}: imports a module by name at run time")
    return edges, problems


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (or a self-import), each
    given as one concrete loop through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in edges:
                continue
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in edges[v]:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return [_loop(component, edges) for component in components]


def _loop(component: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest loop from the component's first module back to itself."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w == start:
                    return paths[v] + [start]
                if w in members and w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    return component


def describe(loop: list[str], edges: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {edges[a][b]})" for a, b in zip(loop, loop[1:])]
    return " -> ".join(steps + [loop[-1]])


def long_modules(root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            found.append(f"{path.relative_to(root.parent)}: {n} lines")
    return found


def test_no_import_cycles():
    edges, _ = import_graph()
    loops = cycles(edges)
    assert not loops, "import cycles:\n" + "\n".join(describe(loop, edges) for loop in loops)


def test_no_function_level_imports_of_our_modules():
    _, problems = import_graph()
    assert not problems, "imports of icl_mech modules inside functions:\n" + "\n".join(problems)


def unexplained_imports(root: Path = ROOT) -> list[str]:
    """Function-level imports (of optional or version-dependent packages) without a one-line
    reason: a comment on the import's line or on the line above it."""
    found = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, in_function in _imports(ast.parse("\n".join(lines))):
            here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
            if in_function and "#" not in here and not above.startswith("#"):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {here.strip()}")
    return found


def test_every_function_level_import_says_why():
    found = unexplained_imports()
    assert not found, "function-level imports without a reason:\n" + "\n".join(found)


def test_no_module_over_300_lines():
    found = long_modules()
    assert not found, f"modules over {MAX_LINES} lines:\n" + "\n".join(found)


# the checks themselves, on a small package written for them


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checks_find_cycles_through_submodules_and_relative_imports(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from icl_mech.sub import b\n",
            "sub/__init__.py": "",
            "sub/b.py": "from . import c\n",
            "sub/c.py": "from ..a import thing\n",
            "d.py": "import icl_mech.a\n",
        },
    )
    edges, problems = import_graph(root)
    assert edges["icl_mech.a"] == {"icl_mech.sub.b": 1}
    assert edges["icl_mech.sub.b"] == {"icl_mech.sub.c": 1}
    assert edges["icl_mech.sub.c"] == {"icl_mech.a": 1}
    assert cycles(edges) == [["icl_mech.a", "icl_mech.sub.b", "icl_mech.sub.c", "icl_mech.a"]]
    assert problems == []


def test_checks_find_function_level_and_dynamic_imports(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "def f():\n    import json\n    from icl_mech import b\n",
            "b.py": "import importlib\n\ndef g():\n    importlib.import_module('icl_mech.a')\n",
        },
    )
    edges, problems = import_graph(root)
    assert cycles(edges) == []
    assert problems == [
        "icl_mech/a.py:3: imports icl_mech.b in a function",
        "icl_mech/b.py:4: imports a module by name at run time",
    ]


def test_checks_find_long_modules(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "long.py": "x = 1\n" * (MAX_LINES + 1)})
    assert long_modules(root) == [f"icl_mech/long.py: {MAX_LINES + 1} lines"]


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
