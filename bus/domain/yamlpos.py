"""Where a field sits in a YAML file, so an error names the line a policy author must fix."""

from __future__ import annotations

from collections.abc import Sequence

import yaml


def line_of(text: str, loc: Sequence[str | int]) -> int | None:
    """The 1-based line of the field at ``loc`` (a pydantic error location) in ``text``.

    The deepest part of ``loc`` that exists is named: a missing field points at its parent.
    ``None`` when the text is not YAML at all.
    """
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    if node is None:
        return None
    line = node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(key):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return line
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line
