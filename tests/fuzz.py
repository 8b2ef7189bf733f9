"""Hypothesis strategies for hostile input: bytes that are not JSON, any JSON value, deep
nesting, lone UTF-16 surrogates (escaped, as JSON carries them), numbers no parser should
take at face value (thousands of digits, past 64 bits, overflowing to infinity, ``NaN``), and
bodies shaped like an entry point's own with any value in any field. Shared by the fuzzers of
every entry point; a ``bytes`` case is what a WebSocket fuzzer sends as a binary frame."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from events.inbound import WS_ACTIONS

CASES = int(os.environ.get("AGENTWORKER_FUZZ_CASES", "2000"))
"""Cases per entry point: 2,000 in ``make test``; ``make reliability`` runs more."""

FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure reproduces, CI is not flaky
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

BATCH = 10
"""Cases drawn per Hypothesis example by the fuzzers that batch them (:data:`BATCHED`):
Hypothesis's own work per example, not the drawing, was most of a fuzzer's time."""
BATCHED = settings(
    FUZZ,
    max_examples=max(1, CASES // BATCH),
    suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.data_too_large],
)

_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value, a few levels deep."""


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


surrogate = st.integers(min_value=0xD800, max_value=0xDFFF).map(lambda c: f"\\u{c:04x}")
"""A lone surrogate as JSON escapes it (Python's json.dumps writes these too)."""


def with_surrogate(text: str, escape: str) -> str:
    return json.dumps(text)[:-1] + escape + '"'


number_literal = st.one_of(
    st.sampled_from(
        [
            "1" * 5000,  # past Python's int-string limit (4,300 digits): ValueError
            "-" + "9" * 4300,
            str(2**63),  # one past 64 bits
            str(-(2**63) - 1),
            "1e999",  # overflows to inf
            "-1e999",
            "1" * 400 + ".5",
            "NaN",  # Python's json takes these; they are not JSON
            "Infinity",
            "-Infinity",
        ]
    ),
    st.integers(min_value=-(2**300), max_value=2**300).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
"""A number as JSON text: within bounds or far outside them (which ``json.dumps`` of a Python
value could not even write)."""


def shaped(fields: dict[str, Any]) -> st.SearchStrategy[str]:
    """JSON objects with some of ``fields`` (a strategy each) and junk keys, serialised; one
    in a few with a field carrying a lone surrogate or a number literal instead."""
    base = st.fixed_dictionaries({}, optional={**fields, "junk": json_values, "": json_values}).map(
        json.dumps
    )
    poison = (
        surrogate.map(lambda s: f'"x{s}"')
        | number_literal
        | number_literal.map(lambda n: f'{{"v": [{n}]}}')
    )
    poisoned = st.tuples(base, st.sampled_from(sorted(fields)), poison).map(
        lambda t: t[0][:-1] + ("," if len(t[0]) > 2 else "") + f'"{t[1]}": {t[2]}' + "}"
    )
    return base | poisoned


def hostile(shape: st.SearchStrategy[str]) -> st.SearchStrategy[str | bytes]:
    """What an attacker sends to an entry point taking bodies like ``shape``."""
    return st.one_of(
        shape,
        shape,  # twice: most cases look almost right
        json_values.map(json.dumps),
        st.binary(max_size=200),
        st.text(max_size=200),
        st.integers(min_value=1, max_value=400).map(_nested),
        st.integers(min_value=1, max_value=400).map(lambda n: "[" * n + "]" * n),
        st.tuples(st.text(max_size=20), surrogate).map(lambda t: with_surrogate(*t)),
        number_literal,
    )


text_field = st.one_of(st.text(max_size=60), json_values, st.just(""), st.just("x" * 300_000))
id_field = st.one_of(
    st.sampled_from(["ws:a:1", "ticket:1", "slack:T1:C1:1.1", "-bad", "", "a" * 300]),
    json_values,
)

ws_frames = shaped(
    {
        "action": st.sampled_from([*WS_ACTIONS, "nope"]),
        "conversation_id": id_field,
        "text": text_field,
        "interrupt_id": text_field,
        "value": json_values,
        "reason": text_field,
        "policy": st.sampled_from(["enqueue", "bogus"]),
    }
)
"""WebSocket frames of every action (ours and the API Gateway WebSocket's), almost right."""
