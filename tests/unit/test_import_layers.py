"""The floor plan of the package (README, "Floors"), counting every import: top level,
inside functions and under ``TYPE_CHECKING`` (grimp, import-linter's graph builder,
sees them all).

- no import circle anywhere, not even between a package and its own submodules (the
  layers contract cannot see those: it compares top-level floors);
- the layers and independence contracts of pyproject.toml hold (``lint-imports``, as
  ``.ci/run`` runs it), and adding an upward import breaks them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"


def import_circles(adjacency: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []
    for start in sorted(adjacency):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            edges = adjacency[node]
            if i < len(edges):
                work.append((node, i + 1))
                nxt = edges[i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def _describe(adjacency: dict[str, list[str]], circle: list[str]) -> str:
    arrows = [f"  {a} -> {b}" for a in circle for b in adjacency[a] if b in circle]
    return f"{len(circle)} modules in a circle:\n" + "\n".join(arrows)


_GRAPH_SCRIPT = """
import json, grimp
g = grimp.build_graph("aufs", cache_dir=None)
print(json.dumps({m: sorted(g.find_modules_directly_imported_by(m)) for m in g.modules}))
"""


def _graph_of(src: Path) -> dict[str, list[str]]:
    """Every import of the package under ``src`` (in a process of its own, where ``aufs``
    is the one under ``src``)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", _GRAPH_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    graph: dict[str, list[str]] = json.loads(out)
    return graph


def _lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed (pip install '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([exe, "--no-cache", "--config", str(REPO / "pyproject.toml")],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def _copy_with_upward_import(tmp_path: Path) -> Path:
    """A copy of the package where the store imports the driver (a floor above it)."""
    src = tmp_path / "src"
    shutil.copytree(SRC / "aufs", src / "aufs",
                    ignore=shutil.ignore_patterns("__pycache__"))
    layout = src / "aufs" / "store" / "layout.py"
    text = layout.read_text()
    layout.write_text(text + "\n\ndef _upward() -> None:\n    from aufs import driver  # noqa\n")
    return src


def test_the_package_has_no_import_circle() -> None:
    graph = _graph_of(SRC)
    circles = import_circles(graph)
    assert not circles, "\n".join(_describe(graph, c) for c in circles)


def test_the_floors_hold() -> None:
    result = _lint_imports(SRC)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_upward_import_breaks_the_floors_and_closes_a_circle(tmp_path: Path) -> None:
    src = _copy_with_upward_import(tmp_path)
    result = _lint_imports(src)
    assert result.returncode != 0
    assert "aufs.store.layout -> aufs.driver" in result.stdout, result.stdout
    circles = import_circles(_graph_of(src))
    assert any("aufs.store.layout" in c and "aufs.driver" in c for c in circles)


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": [], "b": []}, []),
    ({"a": ["b"], "b": []}, []),
    ({"a": ["b"], "b": ["a"]}, [["a", "b"]]),
    ({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "b", "c"]]),
    ({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}, [["a", "b"], ["c", "d"]]),
])
def test_import_circles_finds_every_circle(edges: dict[str, list[str]],
                                           expected: list[list[str]]) -> None:
    assert sorted(import_circles(edges)) == expected
