"""Every backend package is a set of rooms that import one way: no import circle inside a package
(a queue takes its connection, not its store; a store imports its queue, never the reverse), and
every store package has the same rooms with the same names (issue 11). The core's packages
import one way too."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BACKENDS = Path(__file__).resolve().parents[2] / "backends"

# The shared SQL queue is a library for the SQL stores, not a store: it has no rooms of its own.
LIBRARIES = {"apalis_sql"}
# Cron makes its tasks from a schedule into another store: it has no connection of its own.
NO_CONNECTION = {"apalis_cron"}
PACKAGES = sorted(p.name for p in BACKENDS.iterdir() if (p / "__init__.py").exists())
STORES = [name for name in PACKAGES if name not in LIBRARIES]


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


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circle_inside_a_backend_package(package: str) -> None:
    circle = _circle(_imports(BACKENDS / package))
    assert circle is None, f"{package}: {' -> '.join(circle or [])}"


@pytest.mark.parametrize("package", STORES)
def test_every_store_package_has_the_same_rooms(package: str) -> None:
    rooms = {"config", "store", "queue"} | (set() if package in NO_CONNECTION else {"connection"})
    missing = sorted(room for room in rooms if not (BACKENDS / package / f"{room}.py").exists())
    assert not missing, f"{package} has no {', '.join(f'{room}.py' for room in missing)}"
    # The face is the store alone; its settings class is <Kind>Config in config.py.
    face = importlib.import_module(package)
    (store_name,) = face.__all__
    assert store_name.endswith("Store")
    kind = store_name.removesuffix("Store")
    assert hasattr(importlib.import_module(f"{package}.config"), f"{kind}Config")
    assert getattr(importlib.import_module(f"{package}.store"), store_name) is getattr(face, store_name)


CORE = BACKENDS.parent / "apalis_cli"


@pytest.mark.parametrize("package", ["", *sorted(p.name for p in CORE.iterdir() if (p / "__init__.py").exists())])
def test_no_import_circle_inside_a_core_package(package: str) -> None:
    # Imports inside functions count too: a circle broken only at run time still ties the
    # modules together (the board's routes took their state from the app that imports them).
    circle = _circle(_imports(CORE / package))
    assert circle is None, f"apalis_cli/{package}: {' -> '.join(circle or [])}"


def test_the_circle_finder_finds_a_circle() -> None:
    assert _circle({"store": {"queue"}, "queue": {"inspector"}, "inspector": {"store"}}) == [
        "inspector",
        "store",
        "queue",
        "inspector",
    ]
    assert _circle({"store": {"queue"}, "queue": {"connection"}, "connection": set()}) is None
