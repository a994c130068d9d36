"""The reason catalogue is whole: every code the source gives is in it, and nothing else.

The source is read as Python (``reason=...`` arguments, ``reason`` class attributes,
``REASON_*`` constants, ``GatewayError``'s code, ``*_REASONS`` tables), so a new code without
a line in ``bus/reasons.py`` fails here; docs/reasons.md is the catalogue as printed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bus.reasons import MEANING, Reason, markdown

ROOT = Path(__file__).resolve().parents[2]
CODE = re.compile(r"^[a-z]+(\.[a-z_0-9]+)+$")


def _strings(node: ast.AST | None) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Dict):  # a table of codes
        return [v for value in node.values for v in _strings(value)]
    if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" and node.args:
        return _strings(node.args[-1])  # table.get(key, default code)
    return []


def given() -> dict[str, str]:
    """Every reason code in the product's source, with where it is first given."""
    found: dict[str, str] = {}
    for path in sorted([*ROOT.glob("bus/**/*.py"), *ROOT.glob("connectors/**/*.py")]):
        if path.name == "reasons.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            codes: list[str] = []
            if isinstance(node, ast.Call):
                codes += [
                    s for kw in node.keywords if kw.arg == "reason" for s in _strings(kw.value)
                ]
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name == "GatewayError" and len(node.args) > 1:
                    codes += _strings(node.args[1])
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    n = getattr(t, "id", "")
                    if n == "reason" or n.startswith("REASON") or n.endswith("_REASONS"):
                        codes += _strings(node.value)
            for code in codes:
                if CODE.match(code):
                    found.setdefault(code, f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}")
    return found


def test_every_reason_the_source_gives_is_in_the_catalogue_and_nothing_else() -> None:
    source = given()
    assert len(source) > 60  # the scan finds them at all
    missing = {code: where for code, where in source.items() if code not in set(Reason)}
    assert missing == {}, "add these to bus/reasons.py"
    assert sorted(set(Reason) - set(source)) == [], "no longer given anywhere"


def test_every_reason_has_a_meaning_and_the_docs_print_the_catalogue() -> None:
    assert set(MEANING) == set(Reason)
    assert all(MEANING[r].strip() for r in Reason)
    assert (ROOT / "docs/reasons.md").read_text(encoding="utf-8") == markdown(), (
        "python -m bus.reasons > docs/reasons.md"
    )
