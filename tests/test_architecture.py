"""The layering the pipeline relies on, checked statically (no imports, so it runs in ms).

* ``semclip/`` is plain Python: it never imports Prefect.
* ``flows/`` and ``tasks/`` never import the CLI (``semclip.cli``): what they need is library.
* No import cycle among ``semclip`` modules, counting imports inside functions too (a lazy
  import that dodges a cycle is still a cycle); only ``if TYPE_CHECKING:`` blocks, which never
  run, are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` of every import that can run, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base, [a.name for a in node.names], node.lineno
        stack.extend(ast.iter_child_nodes(node))


def _violations(package: str, forbidden: str) -> list[str]:
    found = []
    for name, path in _modules(package).items():
        for module, _, line in _imports(path):
            if module == forbidden or module.startswith(forbidden + "."):
                found.append(f"{name}:{line} imports {module}")
    return found


@pytest.mark.slow
def test_library_never_imports_prefect() -> None:
    assert _violations("semclip", "prefect") == []


@pytest.mark.parametrize("package", ["flows", "tasks"])
def test_pipeline_does_not_import_the_cli(package: str) -> None:
    assert _violations(package, "semclip.cli") == []


def _import_graph() -> dict[str, set[str]]:
    """Edges between semclip modules; ``from pkg import sub`` counts as importing ``pkg.sub``."""
    modules = _modules("semclip")
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            if not targets and module in modules:
                targets = [module]
            graph[name].update(t for t in targets if t != name)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, …, a]``, or ``None`` (iterative DFS, white/grey/black)."""
    state: dict[str, int] = {}
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        iters = [iter(sorted(graph[start]))]
        state[start] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


@pytest.mark.slow
def test_no_import_cycle_in_semclip() -> None:
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
