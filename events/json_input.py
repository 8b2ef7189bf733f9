"""Parsing a JSON object that arrived from outside, refusing what would crash later.

``json.loads`` accepts what nothing downstream can handle: nesting deep enough to exhaust
the interpreter's recursion (``RecursionError``), lone UTF-16 surrogates (``"\\ud800"``),
which cannot be encoded to UTF-8 when the message is stored or logged, integers of more
than 4,300 digits (Python's int-string conversion limit: a ``ValueError`` that is no
``JSONDecodeError``), integers past 64 bits (a LangGraph checkpoint cannot hold them: the
turn that keeps one fails) and the non-JSON literals ``NaN``/``Infinity`` or a float that
overflows to infinity (stored as ``null``, silently). Every entry point parses its body with
:func:`parse_json`, so such input is a ``BadInput`` (400) at the door.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from workers.errors import BadInput

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in a request (an answer's value may be 32
levels deep, inside its envelope)."""

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""The integers accepted: 64-bit signed, what msgpack (LangGraph's checkpoints), SQLite and
most clients hold exactly."""
_INT_DIGITS = len(str(INT_MIN))
"""Longest integer literal within the range (sign included): longer is refused unread, so a
5,000-digit literal costs nothing."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_json(raw: str | bytes, *, what: str = "body") -> Any:
    """``raw`` as JSON; ``BadInput`` (code ``bad_json``, ``bad_number``, ``too_deep`` or
    ``bad_unicode``) naming ``what`` otherwise."""

    def parse_int(literal: str) -> int:
        if len(literal) > _INT_DIGITS:
            _out_of_range(what)
        value = int(literal)
        if not INT_MIN <= value <= INT_MAX:
            _out_of_range(what)
        return value

    def parse_float(literal: str) -> float:
        value = float(literal)  # linear in the literal's length, unlike int()
        if not math.isfinite(value):
            _out_of_range(what)
        return value

    def parse_constant(literal: str) -> NoReturn:
        raise BadInput("bad_json", f"{what} is not valid JSON: {literal} is not a JSON number")

    try:
        data = json.loads(
            raw, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant
        )
    except RecursionError:
        raise _too_deep(what) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput("bad_json", f"{what} is not valid JSON: {exc}") from None
    check_value(data, what=what)
    return data


def check_value(value: Any, *, what: str) -> None:
    """Refuse nesting deeper than :data:`MAX_DEPTH`, strings (or keys) holding a lone
    surrogate, and numbers :func:`parse_json` would refuse (a value that was parsed
    elsewhere, such as an event the Lambda runtime decoded), walking ``value`` without
    recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise BadInput(
                    "bad_unicode", f"{what}: a string holds a lone UTF-16 surrogate", field=what
                )
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                _out_of_range(what)
        elif isinstance(item, float):
            if not math.isfinite(item):
                _out_of_range(what)
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _too_deep(what)
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def _out_of_range(what: str) -> NoReturn:
    raise BadInput(
        "bad_number",
        f"{what}: a number out of range (integers fit in 64 bits, other numbers are finite)",
        field=what,
    )


def _too_deep(what: str) -> BadInput:
    return BadInput("too_deep", f"{what}: nested deeper than {MAX_DEPTH} levels", field=what)
