"""Every backend package is a set of rooms that import one way: no import circle inside a package
(a queue takes its connection, not its store; a store imports its queue, never the reverse)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BACKENDS = Path(__file__).resolve().parents[2] / "backends"

# Packages whose store and queue modules still import each other; each leaves this set when its
# rooms are done (issue 11).
STILL_CIRCULAR = {"apalis_redis", "apalis_rsmq"}


def _imports(package: Path) -> dict[str, set[str]]:
    """Each module of `package` and the sibling modules it imports (at any depth in its code)."""
    modules = {path.stem for path in package.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        found: set[str] = set()
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1:
                found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.level == 0 and node.module and node.module.startswith(f"{package.name}."):
                found.add(node.module.split(".")[1])
        graph[name] = found & modules - {name}
    return graph


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph`, as the modules along it, or None."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        for imported in sorted(graph[name]):
            circle = visit(imported, [*path, name])
            if circle is not None:
                return circle
        done.add(name)
        return None

    for start in sorted(graph):
        circle = visit(start, [])
        if circle is not None:
            return circle
    return None


@pytest.mark.parametrize(
    "package",
    sorted(p.name for p in BACKENDS.iterdir() if (p / "__init__.py").exists() and p.name not in STILL_CIRCULAR),
)
def test_no_import_circle_inside_a_backend_package(package: str) -> None:
    circle = _circle(_imports(BACKENDS / package))
    assert circle is None, f"{package}: {' -> '.join(circle or [])}"


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circle({"store": {"queue"}, "queue": {"inspector"}, "inspector": {"store"}}) == [
        "inspector",
        "store",
        "queue",
        "inspector",
    ]
    assert _circle({"store": {"queue"}, "queue": {"connection"}, "connection": set()}) is None
