"""How much work a regular expression from the configuration may do on one message, checked
before it is ever run (``redact_patterns``: the redaction hook runs them on every span and
every log line, in the server and in each Lambda).

Python's ``re`` backtracks: ``(\\w+\\s?)*@`` takes exponential time on a line of words with
no ``@``, and even ``\\w+@`` takes time quadratic in a long run of letters (each start scans
the run to its end). With no timeout in ``re`` and no compiled second engine to ship in every
Lambda layer, a pattern is accepted only when the work it may do **per starting position**
has a bound that does not depend on the text, and that bound is small: a scan is then linear
in the text, whatever the text is. The bound is computed from the parsed pattern:

- every quantifier must have an upper bound (``{1,64}``, not ``+``, ``*`` or ``{2,}``);
- backreferences and conditional groups are refused (their cost depends on the text);
- the paths a backtracking engine may try are counted: a sequence multiplies the ways its
  parts can end, alternatives add up, a quantifier ``{m,n}`` over a part tries each count.
  Possessive quantifiers (``{1,64}+``) and atomic groups (``(?>...)``) keep one way out,
  which is how a pattern whose parts overlap is made cheap.

The count is an upper bound (it does not see that ``\\s{0,5}`` followed by ``:`` can only
end one way), so the message that refuses a pattern says how to write it.
"""

from __future__ import annotations

import importlib
from typing import Any

from workers.errors import ConfigError

_parser: Any = importlib.import_module("re._parser")
_c: Any = importlib.import_module("re._constants")

MAX_STEPS = 200
"""Work one pattern may do per starting position (about the steps of ``re``'s matcher):
with it, 256 KB of the most hostile text takes well under a second to scan."""
_CAP = 10**12

_ONE_CHARACTER = frozenset({_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN, _c.CATEGORY, _c.AT})
_REPEATS = frozenset({_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT})


class _Refused(Exception):
    """A construct whose cost depends on the text (reason in the message)."""


def pattern_steps(pattern: str) -> int:
    """The work ``pattern`` may do per starting position (see the module's docstring);
    ``ConfigError`` for a construct whose cost has no such bound, or a pattern that does not
    compile."""
    try:
        parsed = _parser.parse(pattern)
    except Exception as exc:  # re.error, or RecursionError for absurd nesting
        raise ConfigError(f"{pattern!r} is not a regular expression: {exc}") from None
    items = list(parsed)
    if items and items[-1][0] in (_c.MAX_REPEAT, _c.MIN_REPEAT):
        # nothing after the pattern's last quantifier can fail: it never gives back
        items[-1] = (_c.POSSESSIVE_REPEAT, items[-1][1])
    try:
        return _sequence(items)[1]
    except _Refused as exc:
        raise ConfigError(f"{pattern!r}: {exc}") from None


def check_pattern(pattern: str) -> None:
    """Refuse (``ConfigError``, naming the pattern and why) a pattern that could make a scan
    of a message slower than linear, or linear with too large a factor."""
    steps = pattern_steps(pattern)
    if steps > MAX_STEPS:
        raise ConfigError(
            f"{pattern!r} may backtrack {steps} steps at each position of a text (at most "
            f"{MAX_STEPS}): narrow its quantifiers' bounds, or make them possessive "
            "({0,5}+) or atomic ((?>...)) where what follows cannot start with what they match"
        )


def _sequence(items: Any) -> tuple[int, int]:
    """(ways out, work) of a sequence: each way out of one part starts the next part."""
    ways, work = 1, 0
    for op, av in items:
        item_ways, item_work = _item(op, av)
        work = min(_CAP, work + ways * item_work)
        ways = min(_CAP, ways * item_ways)
    return ways, work


def _item(op: Any, av: Any) -> tuple[int, int]:
    if op in _ONE_CHARACTER:
        return 1, 1
    if op is _c.SUBPATTERN:
        return _sequence(av[3])
    if op is _c.BRANCH:
        parts = [_sequence(branch) for branch in av[1]]
        return min(_CAP, sum(w for w, _ in parts)), min(_CAP, sum(k for _, k in parts) + len(parts))
    if op in _REPEATS:
        return _repeat(op, *av)
    if op is _c.ATOMIC_GROUP:
        return 1, _sequence(av)[1]
    if op in (_c.ASSERT, _c.ASSERT_NOT):
        return 1, _sequence(av[1])[1]
    if op in (_c.GROUPREF, _c.GROUPREF_EXISTS):
        raise _Refused("backreferences and conditional groups are not allowed")
    raise _Refused(f"unsupported construct {op}")


def _repeat(op: Any, low: int, high: int, body: Any) -> tuple[int, int]:
    if high >= _c.MAXREPEAT:
        raise _Refused("unbounded quantifier (+, * or {n,}): give it an upper bound, e.g. {1,64}")
    ways, work = _sequence(body)
    single = len(body) == 1 and body[0][0] in _ONE_CHARACTER
    step = work if single else work + 3  # a group's repetition has bookkeeping of its own
    if ways == 1:
        total_work = high * step
        total_ways = high - low + 1
    else:
        total_work, total_ways, reach = 0, 1 if low == 0 else 0, 1
        for count in range(1, high + 1):
            total_work = min(_CAP, total_work + reach * step)
            reach = min(_CAP, reach * ways)
            if count >= low:
                total_ways = min(_CAP, total_ways + reach)
            if total_work >= _CAP:
                break
    if op is _c.POSSESSIVE_REPEAT:
        return 1, min(_CAP, total_work)
    # giving back one way at a time is a step too
    return total_ways, min(_CAP, total_work + total_ways)


__all__ = ["MAX_STEPS", "check_pattern", "pattern_steps"]
