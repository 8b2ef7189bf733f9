"""Parsing a JSON object that arrived from outside, refusing what would crash later.

``json.loads`` accepts what nothing downstream can handle: nesting deep enough to exhaust
the interpreter's recursion (``RecursionError``), and lone UTF-16 surrogates (``"\\ud800"``),
which cannot be encoded to UTF-8 when the message is stored or logged. Every entry point
parses its body with :func:`parse_json`, so such input is a ``BadInput`` (400) at the door.
"""

from __future__ import annotations

import json
import re
from typing import Any

from workers.errors import BadInput

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a request (an answer's value may be 32
levels deep, inside its envelope)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(raw: str | bytes, *, what: str = "body") -> Any:
    """``raw`` as JSON; ``BadInput`` (code ``bad_json``, ``too_deep`` or ``bad_unicode``)
    naming ``what`` otherwise."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise _too_deep(what) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput("bad_json", f"{what} is not valid JSON: {exc}") from None
    check_value(data, what=what)
    return data


def check_value(value: Any, *, what: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH` and strings (or keys) holding a lone
    surrogate, walking ``value`` without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise BadInput(
                    "bad_unicode", f"{what}: a string holds a lone UTF-16 surrogate", field=what
                )
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep(what)
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _too_deep(what: str) -> BadInput:
    return BadInput("too_deep", f"{what}: nested deeper than {MAX_DEPTH} levels", field=what)
