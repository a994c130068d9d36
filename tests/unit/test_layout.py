"""The house: each room imports only from the rooms below it (README, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Rooms from the ground up. A module may import from its own room and the rooms below.
FLOORS = [
    ("bus.schemas", "bus.errors", "bus.settings", "bus.reasons"),
    ("bus.domain",),
    ("bus.streaming",),
    ("bus.agents",),
    ("bus.edge",),
    ("connectors",),
    ("bus.dev",),
    ("bus.cli",),
]
#: Arrows up that the README names, and why.
ALLOWED = {
    ("connectors.contract", "bus.dev"),  # a test kit: sample events, a local Kafka
}


def floor(module: str) -> int | None:
    for i, rooms in enumerate(FLOORS):
        if any(module == r or module.startswith(r + ".") for r in rooms):
            return i
    return None


def room(module: str) -> str:
    for rooms in FLOORS:
        for r in rooms:
            if module == r or module.startswith(r + "."):
                return r
    return module


def imports() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of the product's code."""
    found = []
    for path in [*(ROOT / "bus").rglob("*.py"), *(ROOT / "connectors").rglob("*.py")]:
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((module, node.module, node.lineno))
            elif isinstance(node, ast.Import):
                found.extend((module, alias.name, node.lineno) for alias in node.names)
    return found


def test_no_room_imports_from_a_room_above_it() -> None:
    upward = []
    for module, target, line in imports():
        mine, theirs = floor(module), floor(target)
        if mine is None or theirs is None or theirs <= mine:
            continue
        if (module, room(target)) not in ALLOWED:
            upward.append(f"{module}:{line} imports {target}")
    assert upward == []


def test_the_worker_and_the_gateway_never_load_development_tools() -> None:
    product = ("bus.agents", "bus.streaming", "bus.domain", "bus.edge", "bus.schemas")
    loads = [
        f"{m}:{line} imports {t}"
        for m, t, line in imports()
        if m.startswith(product) and t.startswith(("bus.dev", "bus.cli"))
    ]
    assert loads == []


def test_every_module_of_the_package_is_in_a_room() -> None:
    homeless = {m for m, _, _ in imports() if floor(m) is None and m not in ("bus",)}
    assert homeless == set()
