"""Conditions: the one vocabulary subscriptions and matters use to ask about a value.

A condition is a value (equality) or a mapping of operators, every one of which must hold::

    Huaqiao                              equal to
    {gte: 100000}                        eq ne in not_in gt gte lt lte exists contains
    {gte: 2025-01-01, lte: 2025-12-31}   several operators: all of them
    {count: {gte: 1}}                    on a list: its length ...
    {any: confirmed}                     ... any, all or no element (a value or condition)
    {none: {state: active}}              ... elements that are mappings: field -> condition

Subscriptions use one operator per path; matters may combine them and use the list ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any

OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "contains")
LIST_OPERATORS = ("count", "any", "all", "none")

Resolve = Callable[[Any], Any]
"""Turns an expected value that names something (``"{trigger.period_end}"``) into its value."""


def _same(value: Any) -> Any:
    return value


def norm(actual: Any, expected: Any) -> tuple[Any, Any]:
    """Make an event's value and a YAML value comparable (enums, money, dates)."""
    if isinstance(actual, Enum):
        actual = actual.value
    if isinstance(expected, Enum):
        expected = expected.value
    if isinstance(expected, (int, float, Decimal)) and not isinstance(expected, bool):
        try:
            return Decimal(str(actual)), Decimal(str(expected))
        except (InvalidOperation, ValueError):
            return actual, expected
    if isinstance(actual, (date, datetime)) and isinstance(expected, str):
        try:
            return actual, type(actual).fromisoformat(expected)
        except ValueError:
            return actual, expected
    if isinstance(actual, str) and isinstance(expected, (date, datetime)):
        try:
            return type(expected).fromisoformat(actual), expected
        except ValueError:
            return actual, expected
    if type(actual) is datetime and type(expected) is date:
        return actual.date(), expected
    if type(actual) is date and type(expected) is datetime:
        return actual, expected.date()
    return actual, expected


def split(cond: Any) -> tuple[str, Any]:
    """A one-operator condition as (operator, expected value): a bare value means ``eq``."""
    return next(iter(cond.items())) if is_operators(cond) else ("eq", cond)


def is_operators(cond: Any) -> bool:
    """Whether ``cond`` is a mapping of operators rather than a value to equal."""
    return (
        isinstance(cond, Mapping)
        and bool(cond)
        and all(k in OPERATORS or k in LIST_OPERATORS for k in cond)
    )


def holds(actual: Any, cond: Any) -> bool:
    """Whether ``actual`` meets a one-operator condition (what a subscription states)."""
    op, expected = split(cond)
    return _one(actual, op, expected)


def _one(actual: Any, op: str, expected: Any) -> bool:
    if op == "exists":
        return (actual is not None) == bool(expected)
    if actual is None:
        return op in ("ne", "not_in")
    if op in ("in", "not_in"):
        found = any(a == e for a, e in (norm(actual, x) for x in expected))
        return found == (op == "in")
    if op == "contains":
        if isinstance(actual, (list, tuple, set, frozenset)):
            return any(a == e for a, e in (norm(x, expected) for x in actual))
        return str(expected) in str(actual)
    a, e = norm(actual, expected)
    try:
        if op == "eq":
            return bool(a == e)
        if op == "ne":
            return bool(a != e)
        if op == "gt":
            return bool(a > e)
        if op == "gte":
            return bool(a >= e)
        if op == "lt":
            return bool(a < e)
        return bool(a <= e)
    except TypeError:  # e.g. a number compared with text: the condition does not hold
        return False


def satisfied(actual: Any, cond: Any, resolve: Resolve = _same) -> bool:
    """Whether ``actual`` meets ``cond`` (any form above); ``resolve`` reads named values."""
    if not is_operators(cond):
        if isinstance(cond, Mapping):  # field -> condition, on a mapping such as a penalty
            return isinstance(actual, Mapping) and all(
                satisfied(actual.get(k), c, resolve) for k, c in cond.items()
            )
        return _one(actual, "eq", resolve(cond))
    for op, expected in cond.items():
        if op in LIST_OPERATORS:
            items = list(actual) if isinstance(actual, (list, tuple, set, frozenset)) else []
            if op == "count":
                ok = satisfied(len(items), expected, resolve)
            elif op == "any":
                ok = any(satisfied(x, expected, resolve) for x in items)
            elif op == "all":
                ok = all(satisfied(x, expected, resolve) for x in items)
            else:
                ok = not any(satisfied(x, expected, resolve) for x in items)
        elif op in ("in", "not_in"):
            values = resolve(expected)
            values = values if isinstance(values, (list, tuple, set, frozenset)) else [values]
            ok = _one(actual, op, [resolve(v) for v in values])
        else:
            ok = _one(actual, op, resolve(expected))
        if not ok:
            return False
    return True


def problem(cond: Any, *, lists: bool = True) -> str | None:
    """What is wrong with a condition as written, or None: for the file's error message."""
    if not isinstance(cond, Mapping) or not cond:
        return None  # a value to equal
    if not is_operators(cond):
        if any(k in OPERATORS or k in LIST_OPERATORS for k in cond):
            known = ", ".join(OPERATORS + (LIST_OPERATORS if lists else ()))
            return f"mixes fields and operators; an operator is one of {known}"
        found = (problem(c, lists=lists) for c in cond.values())
        return next((p for p in found if p), None)  # field -> condition
    for op, value in cond.items():
        if op in LIST_OPERATORS and not lists:
            return (
                f"{op} is for lists; here a condition is a value or one of {', '.join(OPERATORS)}"
            )
        if op in ("in", "not_in") and not isinstance(value, (list, str)):
            return f"{op} takes a list"
        if op in LIST_OPERATORS and (p := problem(value, lists=lists)):
            return p
    return None
