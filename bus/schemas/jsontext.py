"""JSON from outside, parsed with limits: a hostile document is refused before it is parsed."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from bus.errors import DecodeError

MAX_JSON_DEPTH = 32
"""Levels of nested objects and arrays in a JSON document: an event needs 4, a batch 5."""


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def check_json_depth(data: bytes | str, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise ``DecodeError`` (``schema.too_deep``) if ``data`` nests deeper than ``limit``.

    Brackets are counted outside strings before anything is parsed, so a hostile document
    never reaches the recursive parser; documents with few brackets pass at once.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit:
        raise DecodeError(
            f"JSON nests objects and arrays deeper than {limit} levels",
            reason="schema.too_deep",
        )


def load_json(data: bytes | str, **options: Any) -> Any:
    """Parse JSON from outside: ``DecodeError`` (``schema.decode`` / ``.too_deep``) or a value.

    ``options`` go to ``json.loads`` (hooks, ``parse_float``).
    """
    check_json_depth(data)
    try:
        return json.loads(data, **options)
    except (ValueError, UnicodeDecodeError) as exc:  # also integers of over 4300 digits
        raise DecodeError(f"not valid JSON: {exc}") from None
    except RecursionError:  # bounded above; only a caller already deep in its stack gets here
        raise DecodeError(
            f"JSON nests deeper than {MAX_JSON_DEPTH} levels", reason="schema.too_deep"
        ) from None


__all__ = ["MAX_JSON_DEPTH", "check_json_depth", "load_json"]
